"""Write the engine's golden file from a live PostgreSQL with the hll extension.

The golden file lets the suite check the embedded engine against
postgresql-hll offline: hll values built by ``hll_add_agg`` for several
parameter sets (incl. the seed's (11, 5, 0, 1)), their ``hll_cardinality``,
the bytes of ``hll_union_agg`` over groups of them, and ``hll_hash_*``
outputs.  Run it again only when the set of cases should change:

    .venv/bin/python scripts/make_golden.py [DSN]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import psycopg2

OUT = Path(__file__).resolve().parents[1] / "homeloc_tests" / "golden" / "hll_golden.json"
PARAMS = [(11, 5, -1, 1), (11, 5, 0, 1), (10, 4, 8, 1), (12, 6, -1, 1), (13, 5, -1, 0), (11, 5, 0, 0)]
SIZES = [1, 2, 3, 7, 30, 100, 250, 700, 2000, 6000]
TEXTS = ["", "a", "user:2019-07-01", "jnQWV/Eh03nol0B70Bj1kmoN/70ZgoyoBYi042MfpgE:2020-01-31",
         "Zürich", "日本", "x" * 300]


def main(dsn: str) -> None:
    """Query PostgreSQL and write OUT."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("CREATE EXTENSION IF NOT EXISTS hll")
    cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'hll'")
    version = cur.fetchone()[0]
    cases = []
    start = 1
    for p in PARAMS:
        values = []
        for n in SIZES:
            cur.execute(
                "SELECT hll_add_agg(hll_hash_bigint(x), %s, %s, %s, %s)::text "
                "FROM generate_series(%s::bigint, %s::bigint) AS x",
                (*p, start, start + n - 1),
            )
            value = cur.fetchone()[0]
            cur.execute("SELECT hll_cardinality(%s::hll)::text", (value,))
            values.append({"first": start, "n": n, "value": value, "cardinality": cur.fetchone()[0]})
            start += n // 2 + 1  # consecutive sets overlap, so unions are not disjoint sums
        unions = []
        for group in ([0, 1], [2, 5], [4, 6, 7], [7, 8], [8, 9], list(range(len(SIZES)))):
            cur.execute(
                "SELECT hll_union_agg(v::hll)::text, hll_cardinality(hll_union_agg(v::hll))::text "
                "FROM unnest(%s::text[]) AS v",
                ([values[i]["value"] for i in group],),
            )
            u, c = cur.fetchone()
            unions.append({"members": group, "value": u, "cardinality": c})
        cases.append({"params": list(p), "values": values, "unions": unions})
    cur.execute("SELECT x, hll_hash_bigint(x)::text FROM unnest(%s::bigint[]) AS x",
                ([0, 1, -1, 42, 2**31, -(2**63), 2**63 - 1],))
    bigints = [[int(x), int(h)] for x, h in cur.fetchall()]
    cur.execute("SELECT t, hll_hash_text(t)::text FROM unnest(%s::text[]) AS t", (TEXTS,))
    texts = [[t, int(h)] for t, h in cur.fetchall()]
    OUT.write_text(json.dumps({
        "made_by": f"scripts/make_golden.py against postgresql-hll {version}",
        "cases": cases, "hash_bigint": bigints, "hash_text": texts,
    }, indent=1) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "host=127.0.0.1 port=5432 dbname=test user=postgres")
