"""IO manager for tables: Parquet or CSV files per asset and partition, atomic.

``<base>/<asset>/<partition>.parquet`` for partitioned assets and
``<base>/<asset>.parquet`` otherwise. Values may be Arrow tables, pandas or
GeoPandas frames, ``StagedPartitions`` (files workers already wrote, moved into
place here) or a staged single file. Loading many partitions gives a lazy
``PartitionedTables``.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow as pa

from homeloc_assets.layout import table_file
from homeloc_assets.memory import release_memory
from homeloc_assets.tables import (
    PartitionedTables,
    StagedPartitions,
    read_table,
    write_table,
)


def _asset_name(context) -> str:
    return "__".join(context.asset_key.path)


class HomelocIOManager(dg.ConfigurableIOManager):
    """Parquet (default) or CSV (``metadata={"format": "csv"}``), written atomically."""

    base_dir: str

    def _fmt(self, context) -> str:
        meta = (context.definition_metadata or {}) if hasattr(context, "definition_metadata") else {}
        return str(meta.get("format", "parquet"))

    def path_for(self, asset: str, partition_key: str | None, fmt: str = "parquet") -> Path:
        """Where a value lives (``layout.table_file``: the storage layout's rule)."""
        return table_file(self.base_dir, asset, partition_key, fmt)

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        """Store ``obj`` for the output's asset (and partitions), atomically."""
        asset = _asset_name(context)
        fmt = self._fmt(context)
        if isinstance(obj, StagedPartitions):
            for key, staged in obj.files.items():
                target = self.path_for(asset, key, fmt)
                target.parent.mkdir(parents=True, exist_ok=True)
                if Path(staged).resolve() != target.resolve():
                    os.replace(staged, target)
                    # rename of two links to one file does nothing (POSIX): drop the staged name
                    Path(staged).unlink(missing_ok=True)
            context.add_output_metadata({"partitions_written": len(obj.files), **obj.metadata})
            return
        if obj is None:
            return
        key = context.partition_key if context.has_partition_key else None
        target = self.path_for(asset, key, fmt)
        if isinstance(obj, Path):
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(obj, target)
        elif hasattr(obj, "to_parquet") and hasattr(obj, "geometry") and fmt == "parquet":
            from homeloc_assets.atomic import atomic_path

            with atomic_path(target) as tmp:
                obj.to_parquet(tmp)
        elif isinstance(obj, pd.DataFrame):
            write_table(pa.Table.from_pandas(obj, preserve_index=False), target, fmt)
        elif isinstance(obj, pa.Table):
            write_table(obj, target, fmt)
        else:
            raise TypeError(f"{asset}: cannot store a {type(obj).__name__}")
        context.add_output_metadata({"path": dg.MetadataValue.path(str(target))})

    def load_input(self, context: dg.InputContext):
        """One partition as a table, many as a lazy ``PartitionedTables``, else the file.

        A step's inputs are loaded when the earlier steps' values are gone: their freed
        memory is given back first (``memory.release_memory``).
        """
        release_memory()
        asset = _asset_name(context)
        fmt = self._fmt(context.upstream_output) if context.upstream_output else "parquet"
        if context.has_asset_partitions:
            keys = sorted(context.asset_partition_keys)
            files = {k: self.path_for(asset, k, fmt) for k in keys}
            missing = [k for k, p in files.items() if not p.exists()]
            if missing:
                raise FileNotFoundError(
                    f"{asset}: {len(missing)} partition(s) not materialized, e.g. {missing[0]}"
                )
            if len(keys) == 1 and context.has_partition_key:
                return read_table(files[keys[0]])
            return PartitionedTables(files)
        target = self.path_for(asset, None, fmt)
        if not target.exists():
            raise FileNotFoundError(f"{asset}: not materialized yet ({target})")
        if target.suffix == ".parquet":
            import pyarrow.parquet as pq

            meta = pq.read_schema(target).metadata or {}
            if b"geo" in meta:
                return _read_geo(target)
        return read_table(target)


#: geo tables read in this process, by file version: the countries are an input of about ten
#: steps of one run, 0.1 s each to read
_GEO_READ: dict[tuple, object] = {}


def _read_geo(path):
    """``gpd.read_parquet(path)``, read once per file version in a process (a copy each time:
    a step may change its frame)."""
    import geopandas as gpd

    st = os.stat(path)
    version = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if version not in _GEO_READ:
        for old in [v for v in _GEO_READ if v[0] == version[0]]:  # older versions of the file
            del _GEO_READ[old]
        while len(_GEO_READ) >= 4:  # at most four files, the oldest read goes first
            del _GEO_READ[next(iter(_GEO_READ))]
        _GEO_READ[version] = gpd.read_parquet(path)
    return _GEO_READ[version].copy()
