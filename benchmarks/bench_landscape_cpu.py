"""CPU seconds of the landscape against the batch work itself, one process, batch by batch.

``python benchmarks/bench_landscape_cpu.py <userdays.csv> <workdir> [resolution] [ring] [repeat]``:
for every batch of the file (50,000 users each) times, with ``time.process_time`` (CPU
seconds of this process, all its threads; less sensitive to other processes on a loaded
machine than wall time), what a batch worker does: ``process_batch`` and writing its four
tables, then the landscape part the worker adds (``batch_tables``: classes, cells, and
writing them). Then the steps of ``landscape_cells`` over those tables: reading them,
``combine``, ``landscape_table`` and writing the Parquet and GeoPackage exports.
Wall seconds (``time.perf_counter``) are printed beside. With ``repeat`` > 0, the
landscape's computing steps (``batch_tables`` of all batches, ``combine``,
``landscape_table``) run that many more times on the same inputs in this process and
their least CPU seconds are printed (warm, less noisy than the single first pass).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from homeloc_assets.backends import EmbeddedBackend
from homeloc_assets.catalog import Catalog
from homeloc_assets.defs.landscape import write_landscape
from homeloc_assets.geo import CountryLookup, dissolve_countries, load_world_countries
from homeloc_assets.inference import process_batch
from homeloc_assets.inference.landscape import (
    NO_DICTIONARY,
    BatchLandscapeSpec,
    LandscapeParams,
    batch_tables,
    combine,
    landscape_table,
)
from homeloc_assets.tables import write_table


class Clock:
    """CPU and wall seconds per named step."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.wall: dict[str, float] = {}

    def __call__(self, name, f, *a, **k):
        c, w = time.process_time(), time.perf_counter()
        out = f(*a, **k)
        self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - c
        self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - w
        return out


def main(csv: str, work: str, resolution: int = 8, ring: int = 1, repeat: int = 0) -> None:
    """Print CPU and wall seconds per step and the landscape's share of the batch work."""
    work_dir = Path(work)
    work_dir.mkdir(parents=True, exist_ok=True)
    countries = dissolve_countries(load_world_countries())
    lookup = CountryLookup.from_countries(countries)
    names = countries["country"].to_numpy(dtype=object)
    codes = countries["country_code"].to_numpy(dtype=object)
    _, keys = Catalog(work_dir / "storage").register(Path(csv), 50_000)
    catalog = Catalog(work_dir / "storage")
    backend = EmbeddedBackend()
    spec = BatchLandscapeSpec("DEU", resolution, ring)
    clock = Clock()
    cells, results = [], []
    for key in keys:
        ref = catalog.batch(key)
        res = clock("batch: process_batch", process_batch, ref.path, ref.start, ref.end, names,
                    codes, lookup, backend, expect=ref.expect, hll_params=ref.hll_params)
        for name in ("locations", "country_userdays", "homes", "rejects"):
            clock("batch: write its 4 tables", write_table, getattr(res, name),
                  work_dir / "t" / name / f"{key}.parquet")
        tables = clock("landscape in the worker: batch_tables", batch_tables, res, spec,
                       ref.hll_params)
        path = work_dir / "t" / "landscape" / f"{key}.parquet"
        clock("landscape in the worker: write", write_table, tables["cells"], path,
              no_dictionary=NO_DICTIONARY)
        cells.append(path)
        if repeat:
            results.append((res, ref.hll_params))
    parts = clock("landscape_cells: read", lambda: [pq.read_table(p) for p in cells])
    combined = clock("landscape_cells: combine", combine, parts)
    table, _ = clock("landscape_cells: landscape_table", landscape_table, combined,
                     LandscapeParams(resolution, ring))
    clock("landscape_cells: write parquet + gpkg", write_landscape, work_dir / "out", table)
    print(f"{len(keys)} batches, {table.num_rows} cells")
    rows = sum(t.num_rows for t in parts)
    no_hll = sum(t.column("hll").null_count for t in parts)
    print(f"batch tables: {rows} rows, {no_hll} without an HLL (neighbours); combined: "
          f"{combined.num_rows} rows (cells with an HLL in some batch)")
    print(f"{'step':45s} {'cpu s':>8s} {'wall s':>8s}")
    for name in clock.cpu:
        print(f"{name:45s} {clock.cpu[name]:8.3f} {clock.wall[name]:8.3f}")
    batch = sum(v for k, v in clock.cpu.items() if k.startswith("batch:"))
    land = sum(v for k, v in clock.cpu.items() if k.startswith("landscape"))
    print(f"batch work {batch:.3f} cpu s, landscape {land:.3f} cpu s = {land / batch:.1%}")
    steps = {"batch_tables, all batches": lambda: [batch_tables(r, spec, h) for r, h in results],
             "combine": lambda: combine(parts),
             "landscape_table": lambda: landscape_table(combined, LandscapeParams(resolution, ring))}
    for name, f in steps.items() if repeat else ():
        cpu = []
        for _ in range(repeat):
            c = time.process_time()
            f()
            cpu.append(time.process_time() - c)
        print(f"repeated {name:35s} min {min(cpu):.3f} cpu s of {repeat}")



if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:]))
