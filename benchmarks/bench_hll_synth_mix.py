"""Grouped union + cardinality on the HLLs of a real pipeline input, one core.

Reads the first ~1.2 M rows of a synthetic input (``homeloc synth``), groups
them by (user, country) exactly as the pipeline does, and times
``hll.grouped_cardinality`` (best process CPU time of 4 calls).
Usage: ``python benchmarks/bench_hll_synth_mix.py [FILE]`` (default: the 1 M
file that ``make bench`` generates).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from homeloc_assets import hll
from homeloc_assets.geo import CountryLookup, dissolve_countries, load_world_countries
from homeloc_assets.inference.homes import user_codes
from homeloc_assets.inputs import plan_batches, read_batch

DEFAULT = Path(__file__).parent / "data" / "synth_1000000_seed0.csv"


def main(argv: list[str]) -> int:
    """Print the mix and HLLs/s."""
    path = Path(argv[0]) if argv else DEFAULT
    batch = plan_batches(path, 400_000).batches[0]
    rows = read_batch(path, batch.start, batch.end).rows
    countries = dissolve_countries(load_world_countries())
    lookup = CountryLookup.from_countries(countries)
    cidx = lookup.lookup(rows.column("longitude").to_numpy(), rows.column("latitude").to_numpy())
    key = user_codes(rows.column("user_guid").combine_chunks()) * (len(countries) + 1) + cidx
    groups, inverse = np.unique(key, return_inverse=True)
    blobs = rows.column("hll").combine_chunks()
    types, counts = np.unique(hll.inspect_many(blobs).storage_type, return_counts=True)
    names = {hll.EXPLICIT: "EXPLICIT", hll.SPARSE: "SPARSE", hll.FULL: "FULL"}
    mix = ", ".join(f"{names.get(int(t), t)} {c / len(blobs):.2%}" for t, c in zip(types, counts, strict=True))
    print(f"{len(blobs):,} HLLs in {len(groups):,} groups ({mix})")
    best = float("inf")
    for _ in range(4):
        t = time.process_time()
        hll.grouped_cardinality(blobs, inverse, len(groups))
        best = min(best, time.process_time() - t)
    print(f"best CPU {best:.3f} s = {len(blobs) / best / 1e6:.2f} M HLLs/s on one core")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
