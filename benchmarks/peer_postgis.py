"""All-in-PostgreSQL peer of homeloc (and the reference answer of the end-to-end benchmark).

Owns the PostGIS + postgresql-hll formulation of the whole inference:

1. COPY the CSV into a table with an ``hll`` column (client-side ``COPY FROM
   STDIN``, stock server settings);
2. load the same countries homeloc uses
   (``dissolve_countries(load_world_countries())``) into PostGIS, cut them
   with ``ST_Subdivide(geom, 255)`` and put a GiST index on the pieces;
3. one query: points joined to country pieces, ``hll_union_agg`` per
   (user, country), ``hll_cardinality``, and ``DISTINCT ON (user_guid)``
   ordered by userdays desc, country name (C collation, like homeloc's tie
   rule: alphabetically first).

'within' semantics: a point counts for a country when it is strictly inside
the country, here ``ST_Within(point, piece)`` under the GiST index — the
plain formulation a PostGIS user writes, which PostgreSQL runs as a parallel
join with a parallel (partial) ``hll_union_agg``. A point exactly on a cut
line between two pieces of one country is within neither piece and lost; an
earlier formulation that rescued such points with a per-row subquery ran
about twice as slow (it kept the plan from going parallel), for no
difference in the homes of the benchmark files.

Usage: ``python benchmarks/peer_postgis.py FILE [--out result.csv] [--keep]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ensure_bench_db, log  # noqa: E402

QUERY = """
CREATE TABLE peer_home AS
WITH per_country AS (
    SELECT u.user_guid, p.country, hll_cardinality(hll_union_agg(u.userday_hll)) AS userdays
    FROM peer_userdays u
    JOIN peer_country_parts p
      ON ST_Within(ST_SetSRID(ST_MakePoint(u.longitude, u.latitude), 4326), p.geom)
    GROUP BY u.user_guid, p.country
)
SELECT DISTINCT ON (user_guid) user_guid, country, userdays
FROM per_country
ORDER BY user_guid, userdays DESC, country COLLATE "C"
"""


def load_countries(cur) -> float:
    """(Re)create peer_countries and the subdivided, GiST-indexed peer_country_parts; seconds."""
    from homeloc_assets.geo.countries import dissolve_countries, load_world_countries

    t0 = time.perf_counter()
    countries = dissolve_countries(load_world_countries())
    cur.execute("DROP TABLE IF EXISTS peer_country_parts, peer_countries")
    cur.execute(
        "CREATE TABLE peer_countries (country text PRIMARY KEY, country_code text, "
        "geom geometry(MultiPolygon, 4326))"
    )
    for name, code, geom in zip(
        countries["country"], countries["country_code"], countries.geometry, strict=True
    ):
        cur.execute(
            "INSERT INTO peer_countries VALUES (%s, %s, ST_Multi(ST_GeomFromWKB(%s, 4326)))",
            (name, code, geom.wkb),
        )
    cur.execute(
        "CREATE TABLE peer_country_parts AS "
        "SELECT country, ST_Subdivide(geom, 255) AS geom FROM peer_countries"
    )
    cur.execute("CREATE INDEX ON peer_country_parts USING gist (geom)")
    cur.execute("ANALYZE peer_countries")
    cur.execute("ANALYZE peer_country_parts")
    return time.perf_counter() - t0


def copy_csv(cur, path: Path) -> float:
    """(Re)create peer_userdays and COPY the CSV into it (hll column); seconds."""
    t0 = time.perf_counter()
    cur.execute("DROP TABLE IF EXISTS peer_userdays")
    cur.execute(
        "CREATE TABLE peer_userdays (user_guid text, latitude float8, longitude float8, "
        "userday_hll hll)"
    )
    with open(path, "rb") as fh:
        cur.copy_expert(
            "COPY peer_userdays FROM STDIN WITH (FORMAT csv, HEADER true)", fh, size=1 << 20
        )
    cur.execute("ANALYZE peer_userdays")
    return time.perf_counter() - t0


def run(path: Path, out: Path | None = None, keep: bool = False) -> dict:
    """Run the peer on ``path``; timings, counts, and (if ``out``) the homes as CSV."""
    import psycopg2

    dsn = ensure_bench_db()
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    res: dict = {"input": str(path)}
    with conn.cursor() as cur:
        log(f"peer_postgis: loading countries into PostGIS ({dsn})")
        res["countries_s"] = load_countries(cur)
        cur.execute("SELECT count(*) FROM peer_country_parts")
        res["country_parts"] = cur.fetchone()[0]
        log(f"peer_postgis: COPY {path}")
        res["copy_s"] = copy_csv(cur, path)
        cur.execute("SELECT count(*), count(DISTINCT user_guid) FROM peer_userdays")
        res["rows"], res["users"] = cur.fetchone()
        log(f"peer_postgis: query over {res['rows']:,} rows")
        cur.execute("DROP TABLE IF EXISTS peer_home")
        t0 = time.perf_counter()
        cur.execute(QUERY)
        res["query_s"] = time.perf_counter() - t0
        cur.execute("SELECT count(*) FROM peer_home")
        res["homes"] = cur.fetchone()[0]
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, "w") as fh:
                cur.copy_expert(
                    "COPY (SELECT user_guid, country, userdays FROM peer_home ORDER BY user_guid) "
                    "TO STDOUT WITH (FORMAT csv, HEADER true)",
                    fh,
                )
            res["out"] = str(out)
        if not keep:
            cur.execute("DROP TABLE IF EXISTS peer_home, peer_userdays")
    conn.close()
    res["total_s"] = res["copy_s"] + res["query_s"]
    res["users_per_s"] = res["users"] / res["total_s"] if res["total_s"] else float("nan")
    return res


def main(argv: list[str] | None = None) -> int:
    """CLI: run the peer on one file and print its timings."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("input", type=Path)
    p.add_argument("--out", type=Path, default=None, help="write user_guid,country,userdays")
    p.add_argument("--keep", action="store_true", help="keep the tables afterwards")
    args = p.parse_args(argv)
    res = run(args.input, args.out, args.keep)
    for k, v in res.items():
        print(f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
