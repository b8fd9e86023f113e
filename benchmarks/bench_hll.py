"""Benchmark: grouped hll union + cardinality, embedded engine vs PostgreSQL.

Data: N hlls (default 1,000,000) with default parameters (11,5,-1,1), a
realistic mix: 92% EXPLICIT with 1-20 values (geometric-like, mean ~4), 6%
SPARSE, 2% FULL; ~300k groups.  Embedded: ``hll.grouped_cardinality`` on a
pyarrow BinaryArray (one core).  PostgreSQL: COPY into a temp table, then
time ``SELECT g, hll_cardinality(hll_union_agg(v)) FROM t GROUP BY g``.
Results are compared group by group.  Run: ``.venv/bin/python benchmarks/bench_hll.py [N]``.
"""

from __future__ import annotations

import io
import sys
import time

import numpy as np
import pyarrow as pa

from homeloc_assets import hll
from homeloc_assets.hll._format import FULL, HLL, SPARSE, Params

DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"


def make_data(n: int, n_groups: int, seed: int = 0) -> tuple[list[bytes], np.ndarray]:
    rng = np.random.default_rng(seed)
    p = Params()
    kinds = rng.choice(3, size=n, p=[0.92, 0.06, 0.02])
    k = np.minimum(rng.geometric(0.25, size=n), 20)
    pool = rng.integers(-(2**63), 2**63 - 1, size=2_000_000, dtype=np.int64)  # shared -> duplicates
    hdr = p.header(2)
    sparse_pool, full_pool = [], []
    for i in range(400):
        regs = np.zeros(p.nregs, np.uint8)
        nf = int(rng.integers(150, 250))
        regs[rng.choice(p.nregs, nf, replace=False)] = rng.integers(1, 8, nf)
        sparse_pool.append(hll.encode(HLL(p, SPARSE, registers=regs)))
        if i < 100:
            regs = np.minimum(rng.geometric(0.5, p.nregs) - 1 + (rng.random(p.nregs) < 0.9), 20).astype(np.uint8)
            full_pool.append(hll.encode(HLL(p, FULL, registers=regs)))
    blobs = []
    starts = rng.integers(0, len(pool) - 20, size=n)
    for i in range(n):
        if kinds[i] == 0:
            v = np.unique(pool[starts[i] : starts[i] + k[i]])
            blobs.append(hdr + v.astype(">i8").tobytes())
        elif kinds[i] == 1:
            blobs.append(sparse_pool[i % 400])
        else:
            blobs.append(full_pool[i % 100])
    groups = rng.integers(0, n_groups, size=n)
    return blobs, groups


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    n_groups = max(1, int(n * 0.3))
    print(f"generating {n:,} hlls in {n_groups:,} groups ...", flush=True)
    blobs, groups = make_data(n, n_groups)
    arr = pa.array(blobs, type=pa.binary())
    t = time.perf_counter()
    card = hll.grouped_cardinality(arr, groups, n_groups)
    emb = time.perf_counter() - t
    print(f"embedded grouped_cardinality: {emb:.2f} s  -> {n / emb / 1e6:.2f} M hlls/s")
    t = time.perf_counter()
    _, outs = hll.grouped_union(arr, groups, n_groups)
    embu = time.perf_counter() - t
    print(f"embedded grouped_union (+bytes): {embu:.2f} s  -> {n / embu / 1e6:.2f} M hlls/s")
    try:
        import psycopg2

        conn = psycopg2.connect(DSN)
    except Exception as exc:  # noqa: BLE001
        print(f"PostgreSQL not available ({exc}); skipping the comparison")
        return
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("CREATE EXTENSION IF NOT EXISTS hll")
    cur.execute("DROP TABLE IF EXISTS bench_hll; CREATE UNLOGGED TABLE bench_hll (g int, v hll)")
    buf = io.StringIO("".join(f"{g}\t\\\\x{b.hex()}\n" for g, b in zip(groups.tolist(), blobs, strict=True)))
    t = time.perf_counter()
    cur.copy_expert("COPY bench_hll (g, v) FROM STDIN", buf)
    cur.execute("ANALYZE bench_hll")
    print(f"PostgreSQL COPY: {time.perf_counter() - t:.2f} s (not counted)")
    t = time.perf_counter()
    cur.execute("SELECT g, hll_cardinality(hll_union_agg(v)) FROM bench_hll GROUP BY g")
    rows = cur.fetchall()
    pgt = time.perf_counter() - t
    print(f"PostgreSQL hll_union_agg GROUP BY: {pgt:.2f} s  -> {n / pgt / 1e6:.2f} M hlls/s")
    mism = sum(1 for g, c in rows if not (c == card[g] or abs(c - card[g]) <= 1e-12 * abs(c)))
    print(f"groups compared: {len(rows):,}, mismatches: {mism}")
    cur.execute("SELECT g, hll_union_agg(v)::text FROM bench_hll GROUP BY g")
    bm = sum(1 for g, text in cur.fetchall() if hll.to_hex(outs[g]) != text)
    print(f"union bytes mismatches: {bm}")
    print(f"speed-up embedded vs PostgreSQL (cardinality): {pgt / emb:.1f}x")
    cur.execute("DROP TABLE bench_hll")


if __name__ == "__main__":
    main()
