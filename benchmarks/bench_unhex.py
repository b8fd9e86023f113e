"""Benchmark: decoding a column of bytea hex text (``hll.unhex_many``), one core.

Two real shapes of about 268 MB of hex text each:

* ``sparse``: all-SPARSE values with parameters (11, 5, 0, 1) (header
  ``\\x138b40``), 20-400 filled registers each, as the hlldb exports of the
  seed author hold them;
* ``full``: FULL values (11, 5, -1, 1), 2,566 hex digits each.

Prints the wall clock and the process CPU time (user + sys) of one call,
best of 3. Run: ``.venv/bin/python benchmarks/bench_unhex.py [MB]``.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pyarrow as pa

from homeloc_assets import hll
from homeloc_assets.hll._format import FULL, HLL, SPARSE, Params


def _texts(blobs: list[bytes], target_bytes: int) -> pa.Array:
    texts = ["\\x" + b.hex() for b in blobs]
    per = sum(map(len, texts)) / len(texts)
    reps = max(1, int(target_bytes / per / len(texts)))
    return pa.array(texts * reps, pa.string())


def make_sparse(target_bytes: int, seed: int = 0) -> pa.Array:
    """All-SPARSE (11, 5, 0, 1) values."""
    rng = np.random.default_rng(seed)
    p = Params(11, 5, 0, 1)
    blobs = []
    for _ in range(2000):
        regs = np.zeros(p.nregs, np.uint8)
        nf = int(rng.integers(20, 400))
        regs[rng.choice(p.nregs, nf, replace=False)] = rng.integers(1, 8, nf)
        blobs.append(hll.encode(HLL(p, SPARSE, registers=regs)))
    return _texts(blobs, target_bytes)


def make_full(target_bytes: int, seed: int = 0) -> pa.Array:
    """FULL (11, 5, -1, 1) values."""
    rng = np.random.default_rng(seed)
    p = Params()
    blobs = []
    for _ in range(500):
        regs = np.minimum(rng.geometric(0.5, p.nregs), 20).astype(np.uint8)
        blobs.append(hll.encode(HLL(p, FULL, registers=regs)))
    return _texts(blobs, target_bytes)


def _time(fn, values: pa.Array) -> tuple[float, float]:
    best_wall = best_cpu = float("inf")
    for _ in range(3):
        c0, w0 = time.process_time(), time.perf_counter()
        fn(values)
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best_wall, best_cpu


def main(argv: list[str]) -> int:
    """Print seconds and MB/s per shape."""
    target = int(float(argv[0]) * 1e6) if argv else 268_000_000
    for name, make in (("sparse", make_sparse), ("full", make_full)):
        values = make(target)
        mb = values.nbytes / 1e6
        arr, ok = hll.unhex_many(values)
        assert ok.all() and arr[0].as_py() == bytes.fromhex(values[0].as_py()[2:])
        wall, cpu = _time(hll.unhex_many, values)
        print(f"{name}: {len(values):,} values, {mb:,.0f} MB of hex text: "
              f"{wall:.2f} s wall, {cpu:.2f} s CPU ({mb / wall:,.0f} MB/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
