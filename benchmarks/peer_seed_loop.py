"""The seed's per-user loop, re-implemented faithfully as a benchmark peer.

Owns the "before" figure: the CSV is streamed one user at a time (it is sorted
by user_guid); for each user a GeoDataFrame of their points is joined to the
countries with ``geopandas.sjoin(predicate="within")``, and for each
(user, country) one PostgreSQL round trip computes
``SELECT hll_cardinality(hll_union_agg(h)) FROM unnest(%s::hll[]) h``; the
home is the country with the most userdays (ties: alphabetically first).

It runs on the first ``--users`` users only and reports users/s and the
extrapolated time for the 6.3 M users of the real input.

Usage: ``python benchmarks/peer_seed_loop.py FILE [--users 2000] [--out homes.csv]``.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import log  # noqa: E402

REAL_USERS = 6_300_000
SQL = "SELECT hll_cardinality(hll_union_agg(h)) FROM unnest(%s::hll[]) AS h"


def stream_users(path: Path) -> Iterator[tuple[str, list[list[str]]]]:
    """Yield ``(user_guid, rows)`` for each user of a CSV sorted by user_guid."""
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        next(reader)  # header
        current, rows = None, []
        for row in reader:
            if row[0] != current:
                if current is not None:
                    yield current, rows
                current, rows = row[0], []
            rows.append(row)
        if current is not None:
            yield current, rows


def run(path: Path, n_users: int = 2000, out: Path | None = None, dsn: str | None = None) -> dict:
    """Run the loop over the first ``n_users`` users of ``path``; timings and homes."""
    import geopandas as gpd
    import pandas as pd
    import psycopg2

    from homeloc_assets.geo.countries import dissolve_countries, load_world_countries

    t_setup = time.perf_counter()
    world = dissolve_countries(load_world_countries())[["country", "geometry"]]
    world.sindex  # noqa: B018 - build the spatial index before timing, like a warm loop
    conn = psycopg2.connect(dsn or "host=127.0.0.1 port=5432 dbname=test user=postgres")
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("CREATE EXTENSION IF NOT EXISTS hll")
    setup_s = time.perf_counter() - t_setup

    homes: list[tuple[str, str, float]] = []
    round_trips = rows_seen = 0
    t0 = time.perf_counter()
    for i, (guid, rows) in enumerate(stream_users(path)):
        if i >= n_users:
            break
        rows_seen += len(rows)
        df = pd.DataFrame(rows, columns=["user_guid", "latitude", "longitude", "userday_hll"])
        points = gpd.GeoDataFrame(
            df,
            geometry=gpd.points_from_xy(
                df["longitude"].astype(float), df["latitude"].astype(float)
            ),
            crs="EPSG:4326",
        )
        joined = gpd.sjoin(points, world, how="inner", predicate="within")
        best: tuple[str, float] | None = None
        for country, grp in joined.groupby("country", sort=True):
            cur.execute(SQL, (list(grp["userday_hll"]),))
            days = cur.fetchone()[0]
            round_trips += 1
            if best is None or days > best[1]:
                best = (country, days)
        if best is not None:
            homes.append((guid, best[0], best[1]))
    seconds = time.perf_counter() - t0
    conn.close()
    users = min(n_users, i + 1) if rows_seen else 0
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(homes, columns=["user_guid", "country", "userdays"]).to_csv(out, index=False)
    ups = users / seconds if seconds else float("nan")
    return {
        "input": str(path),
        "users": users,
        "rows": rows_seen,
        "round_trips": round_trips,
        "setup_s": setup_s,
        "loop_s": seconds,
        "users_per_s": ups,
        "extrapolated_6_3M_h": REAL_USERS / ups / 3600 if ups else float("nan"),
        "homes": homes,
    }


def main(argv: list[str] | None = None) -> int:
    """CLI: run the loop on the first users of one file and print its timings."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("input", type=Path)
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    log(f"peer_seed_loop: first {args.users} users of {args.input}")
    res = run(args.input, args.users, args.out)
    res.pop("homes")
    for k, v in res.items():
        print(f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
