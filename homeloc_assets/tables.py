"""Table files on disk: Parquet (default) and CSV, written atomically, read lazily.

Shared by the IO manager, the worker processes and the exports; no Dagster.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from homeloc_assets.atomic import atomic_path

FORMATS = ("parquet", "csv")
#: quote only where needed: plain `user_guid,country` lines like the seed's
CSV_OPTIONS = pacsv.WriteOptions(quoting_style="needed")
#: LZ4: measured here on 1 M home rows it writes 1.3x and reads 2.5x faster
#: than zstd, at about twice the size — the files are intermediate.
PARQUET_COMPRESSION = "lz4"


def write_table(table: pa.Table, target: str | Path, fmt: str = "parquet") -> Path:
    """Write ``table`` to ``target`` atomically as Parquet or CSV (one header)."""
    target = Path(target)
    with atomic_path(target) as tmp:
        if fmt == "parquet":
            pq.write_table(table, tmp, compression=PARQUET_COMPRESSION)
        elif fmt == "csv":
            pacsv.write_csv(table, tmp, CSV_OPTIONS)
        else:
            raise ValueError(f"unknown table format {fmt!r}: use one of {FORMATS}")
    return target


def read_table(path: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """Read a Parquet or CSV file written by ``write_table``."""
    path = Path(path)
    if path.suffix == ".csv":
        t = pacsv.read_csv(path)
        return t.select(list(columns)) if columns else t
    return pq.read_table(path, columns=list(columns) if columns else None)


@dataclass
class StagedPartitions:
    """Partition files already written by workers, to be committed by the IO manager.

    ``files`` maps partition key -> staged file; ``metadata`` is for the UI.
    """

    files: dict[str, Path]
    metadata: dict = field(default_factory=dict)


@dataclass
class PartitionedTables:
    """A lazy view of many partitions of one asset, in partition order.

    Downstream assets stream through it (``iter_tables``) so no step holds the
    whole data set.
    """

    files: dict[str, Path]

    def keys(self) -> list[str]:
        """Partition keys, in order."""
        return list(self.files)

    def iter_tables(self, columns: Sequence[str] | None = None) -> Iterator[tuple[str, pa.Table]]:
        """``(partition_key, table)`` one partition at a time."""
        for key, path in self.files.items():
            yield key, read_table(path, columns)

    def read_all(self, columns: Sequence[str] | None = None) -> pa.Table:
        """All partitions concatenated (small data only)."""
        tables = [t for _, t in self.iter_tables(columns)]
        if not tables:
            raise ValueError("no partitions to read")
        return pa.concat_tables(tables)

    def __len__(self) -> int:
        return len(self.files)
