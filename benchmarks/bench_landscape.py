"""Time the landscape assets against the batch step on one synthetic file.

``python benchmarks/bench_landscape.py <userdays.csv> <workdir> [workers] [in_workers]``:
materialises the countries, the batch step (all batches, one run, ``workers`` processes), the
classification, then ``landscape_batch_cells`` and ``landscape_cells`` (without the maps), each
timed with ``time.perf_counter`` around ``dagster.materialize``. ``in_workers`` 0 switches off
the batch workers' landscape tables (``Settings.landscape``, as ``--no-landscape``), so the
batch step is timed without them and ``landscape_batch_cells`` computes them itself.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import dagster as dg

from homeloc_assets.catalog import Catalog
from homeloc_assets.definitions import build_definitions
from homeloc_assets.settings import Settings

BATCH = ["user_locations", "user_country_userdays", "user_home_locations", "rejected_rows"]


def main(csv: str, work: str, workers: int = 2, in_workers: int = 1) -> None:
    """Print seconds per step."""
    settings = Settings(input_dir=str(Path(csv).parent), output_dir=work, workers=workers,
                        landscape=bool(in_workers))
    defs = build_definitions(settings)
    instance = dg.DagsterInstance.ephemeral()
    _, keys = Catalog(settings.storage_path).register(Path(csv), settings.batch_users)
    instance.add_dynamic_partitions("user_batches", keys)
    tags = {"dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[-1]}
    quiet = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    for name, sel, t in (("countries", ["world_countries", "countries"], None),
                         ("batch step", BATCH, tags),
                         ("user_classification", ["user_classification"], None),
                         ("landscape_batch_cells", ["landscape_batch_cells"], tags),
                         ("landscape_cells", ["landscape_cells"], None)):
        t0 = time.perf_counter()
        res = dg.materialize(defs.assets, selection=sel, instance=instance,
                             resources=defs.resources, tags=t, run_config=quiet)
        assert res.success
        print(f"{name:24s} {time.perf_counter() - t0:8.2f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:]))
