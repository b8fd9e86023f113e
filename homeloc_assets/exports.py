"""The export files (the README's Exports section), streamed batch by batch, written atomically.

``user_home_locations.csv`` (user_guid,country), ``user_classification.csv``
(user_guid,classification), ``user_country_userdays.parquet``,
``user_home_locations.parquet``, ``rejected_rows.csv`` (global input line),
``home_countries.csv`` (users per home country and class) and ``summary.json``.
All are written to temporary files first and renamed into place only when
every one of them is complete; they go into a generation folder that
:mod:`homeloc_assets.publish` then publishes with the figures.

Writers of one folder take turns (an exclusive ``flock`` on the folder itself,
so no lock file shows up in it), and the one holding the lock first removes
temporary files that a killed writer (``kill -9``) left behind: no process
that could still be writing them is alive then.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from homeloc_assets.atomic import atomic_path, remove_temporaries
from homeloc_assets.geo.layers import layer_assets
from homeloc_assets.inference import CLASS_LOCAL, CLASS_UNDETERMINED
from homeloc_assets.inputs.reader import EXPORTED_REJECTS_SCHEMA as REJECTS_SCHEMA
from homeloc_assets.tables import PartitionedTables, csv_writer

EXPORT_FILES = (
    "user_home_locations.csv",
    "user_classification.csv",
    "user_country_userdays.parquet",
    "user_home_locations.parquet",
    "rejected_rows.csv",
    "home_countries.csv",
    "summary.json",
)

#: columns of ``home_countries.csv``: users per home country and class
HOME_COUNTRIES_SCHEMA = pa.schema([
    ("country", pa.string()), ("code", pa.string()), ("users", pa.int64()),
    ("locals", pa.int64()), ("tourists", pa.int64()), ("undetermined", pa.int64()),
    ("share", pa.float64()),
])

#: the contract columns of ``user_home_<NAME>.parquet``
LAYER_HOME_COLUMNS = ["user_guid", "region", "region_code", "userdays", "total_userdays",
                      "home_share", "runner_up_code", "margin", "tie", "status", "reason"]



def global_line_offsets(
    keys: Iterable[str], stats: dict[str, dict], header_lines: dict[str, int]
) -> dict[str, int]:
    """For each batch, the number of physical input lines before it.

    ``stats[key]["n_lines"]`` are the lines of each batch, ``header_lines[plan_id]``
    the lines up to and including the header. Batches of one plan are contiguous
    and ordered by index.
    """
    by_plan: dict[str, list[tuple[int, str]]] = {}
    for key in keys:
        s = stats[key]
        by_plan.setdefault(s["plan_id"], []).append((int(s["index"]), key))
    offsets: dict[str, int] = {}
    for plan_id, items in by_plan.items():
        items.sort()
        expected = list(range(len(items)))
        if [i for i, _ in items] != expected:
            raise ValueError(f"plan {plan_id}: batches {[i for i, _ in items]} are not all present")
        acc = header_lines[plan_id]
        for _, key in items:
            offsets[key] = acc
            acc += int(stats[key]["n_lines"])
    return offsets


class _Writers(contextlib.ExitStack):
    """Temporary files for every export, committed together."""

    def __init__(self, out_dir: Path) -> None:
        super().__init__()
        self.out_dir = out_dir
        self.paths: dict[str, Path] = {}

    def path(self, name: str) -> Path:
        if name not in self.paths:
            self.paths[name] = self.enter_context(atomic_path(self.out_dir / name))
        return self.paths[name]


@contextlib.contextmanager
def exports_lock(out_dir: Path) -> Iterator[None]:
    """Exclusive lock on ``out_dir`` for writing its exports (released when the process dies)."""
    fd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def remove_stale_temporaries(out_dir: Path) -> list[Path]:
    """Delete ``.<export>.*.tmp`` files of killed writers; call only while holding the lock."""
    return [p for name in EXPORT_FILES for p in remove_temporaries(out_dir / name)]


def write_exports(
    out_dir: str | Path,
    homes: PartitionedTables,
    country_userdays: PartitionedTables,
    classification_path: str | Path,
    rejects: PartitionedTables,
    line_offsets: dict[str, int],
    summary: dict,
    home_evidence: Callable[[pa.Table], pa.Table] | None = None,
    layers: dict[str, tuple[PartitionedTables, PartitionedTables]] | None = None,
    layer_evidence: Callable[[pa.Table], pa.Table] | None = None,
) -> dict[str, Path]:
    """Write all export files into ``out_dir``; returns name -> path.

    ``home_evidence`` adds ``status``/``reason`` to each batch of homes;
    ``layers`` maps a region layer's name to its (region userdays, homes)
    partitions, exported as ``user_region_userdays_<NAME>.parquet`` and
    ``user_home_<NAME>.parquet`` (with ``layer_evidence``'s columns).
    """
    home_evidence = home_evidence or (lambda t: t)
    layer_evidence = layer_evidence or (lambda t: t)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with exports_lock(out_dir), _Writers(out_dir) as w:
        remove_stale_temporaries(out_dir)

        def classification_csv(path: Path) -> None:
            cls_file = pq.ParquetFile(classification_path)
            schema = pa.schema([("user_guid", pa.string()), ("classification", pa.string())])
            with csv_writer(path, schema) as cw:
                # streamed: the table of all users is never held whole
                for rb in cls_file.iter_batches(batch_size=500_000,
                                                columns=["user_guid", "classification"]):
                    t = pa.Table.from_batches([rb])
                    cw.write_table(t.filter(pc.not_equal(t.column("classification"),
                                                         CLASS_UNDETERMINED)))

        jobs: dict[str, Callable[[Path], None]] = {
            "user_home_locations.csv": lambda path: _stream_csv(
                path, (t for _, t in homes.iter_tables(["user_guid", "country"])),
                pa.schema([("user_guid", pa.string()), ("country", pa.string())])),
            "user_classification.csv": classification_csv,
            "user_country_userdays.parquet": lambda path: _stream_parquet(
                path, (t for _, t in country_userdays.iter_tables(
                    ["user_guid", "country", "country_code", "userdays", "locations"]))),
            "user_home_locations.parquet": lambda path: _stream_parquet(
                path, (home_evidence(t) for _, t in homes.iter_tables())),
        }
        for name, (region_userdays, region_homes) in (layers or {}).items():
            ud_file, home_file = (f"{a}.parquet" for a in layer_assets(name))
            jobs[ud_file] = lambda path, r=region_userdays: _stream_parquet(
                path, (t for _, t in r.iter_tables()))
            jobs[home_file] = lambda path, r=region_homes: _stream_parquet(path, (
                layer_evidence(t).select(LAYER_HOME_COLUMNS) for _, t in r.iter_tables()))
        jobs["rejected_rows.csv"] = lambda path: _stream_csv(
            path, _global_rejects(rejects, line_offsets), REJECTS_SCHEMA)
        jobs["home_countries.csv"] = lambda path: _stream_csv(
            path, [home_countries(classification_path)], HOME_COUNTRIES_SCHEMA)
        targets = {name: w.path(name) for name in jobs}  # registered here, not in threads
        # two files at a time: Arrow's CSV and Parquet writers release the GIL, and
        # the exports step has the machine to itself in a run
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = [pool.submit(job, targets[name]) for name, job in jobs.items()]
            wait(futures, return_when=FIRST_EXCEPTION)
            for future in futures:
                future.cancel()  # after a failure, the files not started are not written
        for future in futures:
            if not future.cancelled():
                future.result()  # the first error, once every writer stopped
        w.path("summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        paths = {name: out_dir / name for name in w.paths}
    return paths


#: the columns :func:`class_counts` counts users by
CLASS_COUNT_KEYS = ["country", "country_code", "classification"]


def class_counts(classification_path: str | Path) -> pa.Table:
    """Users per (home ``country``, ``country_code``, ``classification``): the keys and
    ``users``, read batch by batch from the classification (never the table of all users).

    The exports and three figures of a run count the same file: the counts are kept per
    process for the file's current version (path, size, modification time).
    """
    path = Path(classification_path)
    st = path.stat()
    return _class_counts(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _class_counts(path: str, size: int, mtime_ns: int) -> pa.Table:
    parts = []
    for rb in pq.ParquetFile(path).iter_batches(batch_size=1_000_000, columns=CLASS_COUNT_KEYS):
        t = pa.Table.from_batches([rb])
        parts.append(t.group_by(CLASS_COUNT_KEYS).aggregate([([], "count_all")]))
    if not parts:
        return pa.table({k: pa.array([], pa.string()) for k in CLASS_COUNT_KEYS}
                        | {"users": pa.array([], pa.int64())})
    t = pa.concat_tables(parts).group_by(CLASS_COUNT_KEYS).aggregate([("count_all", "sum")])
    return t.select([*CLASS_COUNT_KEYS, "count_all_sum"]).rename_columns([*CLASS_COUNT_KEYS, "users"])


def home_countries(classification_path: str | Path) -> pa.Table:
    """Users per home country: Locals, Tourists (every tourist class), undetermined, and the
    country's share of all users with a home; most users first, then by name."""
    t = class_counts(classification_path)
    if not t.num_rows:
        return HOME_COUNTRIES_SCHEMA.empty_table()
    cls = t.column("classification")
    n = t.column("users")
    zero = pa.scalar(0, pa.int64())
    by_class = {
        "locals": pc.if_else(pc.equal(cls, CLASS_LOCAL), n, zero),
        "undetermined": pc.if_else(pc.equal(cls, CLASS_UNDETERMINED), n, zero),
    }
    by_class["tourists"] = pc.if_else(
        pc.or_(pc.equal(cls, CLASS_LOCAL), pc.equal(cls, CLASS_UNDETERMINED)), zero, n)
    t = pa.table({"country": t.column("country"), "code": t.column("country_code"), "users": n,
                  **by_class})
    t = t.group_by(["country", "code"]).aggregate(
        [(c, "sum") for c in ("users", "locals", "tourists", "undetermined")])
    t = t.rename_columns([c.removesuffix("_sum") for c in t.column_names])
    total = pc.sum(t.column("users")).as_py() or 1
    t = t.append_column("share", pc.divide(t.column("users").cast(pa.float64()), float(total)))
    t = t.sort_by([("users", "descending"), ("country", "ascending")])
    return t.select(HOME_COUNTRIES_SCHEMA.names).cast(HOME_COUNTRIES_SCHEMA)


def _global_rejects(rejects: PartitionedTables, offsets: dict[str, int]) -> Iterator[pa.Table]:
    for key, t in rejects.iter_tables():
        line = pc.add(t.column("line").cast(pa.int64()), pa.scalar(offsets[key], pa.int64()))
        yield pa.table(
            {
                "line": line,
                "reason": t.column("reason"),
                "raw": t.column("raw"),
                "batch": pa.array([key] * t.num_rows, pa.string()),
            },
            schema=REJECTS_SCHEMA,
        )


def _stream_csv(path: Path, tables: Iterable[pa.Table], schema: pa.Schema) -> None:
    with csv_writer(path, schema) as writer:
        for t in tables:
            if t.num_rows:
                writer.write_table(t.select(schema.names).cast(schema))


def _stream_parquet(path: Path, tables: Iterable[pa.Table]) -> None:
    writer = None
    try:
        for t in tables:
            if writer is None:
                # user ids are nearly all distinct and random: their dictionary and their
                # min/max statistics are built for nothing (about a tenth of the writing)
                other = [n for n in t.column_names if n != "user_guid"]
                writer = pq.ParquetWriter(str(path), t.schema, compression="zstd",
                                          use_dictionary=other, write_statistics=other)
            writer.write_table(t.cast(writer.schema))
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise ValueError("no batches to export")
