"""The grouped hll union, compiled kernel against the numpy reference, on a real-shaped input.

``python benchmarks/bench_kernel.py <userdays.csv> [repeat]``: reads the file's
``userday_hll`` column once (pyarrow, then ``hll.unhex_many`` and ``hll.parse_many``),
groups the rows by user, and times ``grouped_cardinality`` and ``grouped_union_arrow``
with each kernel (``hll.use_kernel``), alternating, ``repeat`` rounds (default 3); prints
the least wall seconds of each and checks that both kernels give the same cardinalities
and bytes. The groups are one per user: the batch step's per-(user, country) union has
about that shape.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from homeloc_assets import hll


def main(path: str, repeat: int = 3) -> None:
    """Print the least seconds per function and kernel; fail when the results differ."""
    t = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
        column_types={"userday_hll": pa.string(), "user_guid": pa.string()}))
    blobs, ok = hll.unhex_many(t.column("userday_hll"))
    _, groups = np.unique(t.column("user_guid").to_numpy(zero_copy_only=False), return_inverse=True)
    parsed = hll.parse_many(blobs)
    print(f"{path}: {t.num_rows:,} rows, {int(groups.max()) + 1:,} users, "
          f"{int(ok.sum()):,} valid hex values")
    best: dict[tuple[str, str], float] = {}
    results = {}
    for _ in range(repeat):
        for name in ("numpy", "compiled"):
            with hll.use_kernel(name):
                t0 = time.perf_counter()
                card = hll.grouped_cardinality(parsed, groups)
                t1 = time.perf_counter()
                ucard, union = hll.grouped_union_arrow(parsed, groups)
                t2 = time.perf_counter()
            for fn, s in (("grouped_cardinality", t1 - t0), ("grouped_union_arrow", t2 - t1)):
                best[fn, name] = min(best.get((fn, name), s), s)
            results[name] = (card, ucard, union)
    a, b = results["numpy"], results["compiled"]
    assert np.array_equal(a[0], b[0], equal_nan=True) and np.array_equal(a[1], b[1], equal_nan=True)
    assert a[2].equals(b[2]), "union bytes differ"
    for fn in ("grouped_cardinality", "grouped_union_arrow"):
        n, c = best[fn, "numpy"], best[fn, "compiled"]
        print(f"{fn:22s} numpy {n:6.3f} s  compiled {c:6.3f} s  ({n / c:.1f}x)")
    print("cardinalities and union bytes identical")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:3]))
