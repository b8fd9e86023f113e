"""End-to-end benchmark harness (``make bench``): homeloc vs. its peers on the same synthetic files.

Owns the end-to-end figures. For each size it generates the synthetic input
once into ``benchmarks/data/`` (reused by later runs with the same seed), then
on that same file measures

* ``homeloc run`` as a subprocess, per backend (wall time, users/s, peak RSS
  of the process tree polled from /proc, and the largest single process from
  ``/usr/bin/time -v``);
* the all-in-PostgreSQL peer (``peer_postgis.py``): COPY and query timed
  separately; its answer is the reference homeloc is compared with, user by
  user (and both are compared with the generator's truth);
* the seed's per-user loop (``peer_seed_loop.py``) on the first
  ``--seed-sample`` users of the first size, extrapolated to 6.3 M users.

A markdown table goes to stdout and to ``benchmarks/results/<date>.md`` (with
the raw figures as JSON next to it).

Usage: ``python benchmarks/run.py [--sizes 100000,1000000,6300000]
[--backends embedded,postgres] [--seed-sample 2000] [--skip-peers]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402
from _common import (  # noqa: E402
    DATA_DIR,
    RESULTS_DIR,
    VENV_BIN,
    compare_homes,
    data_file,
    dsn,
    ensure_bench_db,
    log,
    markdown_table,
    run_measured,
)

COLUMNS = [
    "users",
    "system",
    "wall_s",
    "users_per_s",
    "peak_tree_rss_mb",
    "max_proc_rss_mb",
    "vs_postgis",
    "vs_truth",
    "notes",
]


def _truth(path: Path) -> pd.DataFrame:
    from homeloc_assets.synth import truth_path_for

    t = pd.read_csv(truth_path_for(path), dtype=str, keep_default_na=False)
    return t.rename(columns={"home_country": "country"})


def _mismatch_text(cmp: dict | None) -> str:
    if cmp is None:
        return ""
    extra = []
    if cmp["missing"]:
        extra.append(f"{cmp['missing']} missing")
    if cmp["extra"]:
        extra.append(f"{cmp['extra']} extra")
    return f"{cmp['mismatches']} of {cmp['users_compared']:,}" + (
        f" ({', '.join(extra)})" if extra else ""
    )


def ensure_data(
    n_users: int, seed: int, regenerate: bool, explicit_max: int | None = None
) -> tuple[Path, dict]:
    """The synthetic file for ``n_users`` (generated now unless it exists)."""
    from homeloc_assets import synth

    path = data_file(n_users, seed, explicit_max)
    extra = {} if explicit_max is None else {"explicit_max": explicit_max}
    if path.exists() and synth.truth_path_for(path).exists() and not regenerate:
        log(f"reusing {path}")
        return path, {"generated": False, "bytes": path.stat().st_size}
    log(f"generating {n_users:,} users -> {path}")

    def progress(done: int, total: int, rows: int) -> None:
        log(f"synth {done:,}/{total:,} users, {rows:,} rows")

    s = synth.generate(n_users, path, seed=seed, progress=progress, **extra)
    log(s.describe())
    return path, {
        "generated": True,
        "bytes": s.bytes_written,
        "rows": s.n_rows,
        "seconds": s.seconds,
        "hll_types": s.hll_types,
    }


def bench_homeloc(path: Path, n_users: int, backend: str, args: argparse.Namespace) -> dict:
    """``homeloc run`` on ``path`` with ``backend`` as a measured subprocess."""
    out = DATA_DIR / f"out_{path.stem}_{backend}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(VENV_BIN / "homeloc"), "run", "--input", str(path), "--out", str(out)]
    cmd += ["--backend", backend, "--quiet"]
    if args.batch_users:
        cmd += ["--batch-users", str(args.batch_users)]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    env = dict(os.environ)
    if backend == "postgres":
        env.setdefault("HOMELOC_PG_DSN", ensure_bench_db())
    log(f"homeloc {backend}: {' '.join(cmd)}")
    m = run_measured(cmd, env=env)
    res = {
        "system": f"homeloc run --backend {backend}",
        "cmd": " ".join(cmd),
        "returncode": m.returncode,
        "wall_s": m.seconds,
        "peak_tree_rss_mb": m.peak_tree_rss_mb,
        "max_proc_rss_mb": m.max_rss_mb,
        "stdout_tail": m.stdout.strip().splitlines()[-15:],
    }
    if m.returncode != 0:
        res["stderr_tail"] = [line for line in m.stderr.strip().splitlines() if "\t" not in line][
            -20:
        ]
        log(f"homeloc {backend} failed ({m.returncode}): " + "\n".join(res["stderr_tail"]))
        return res
    res["users_per_s"] = n_users / m.seconds
    homes_csv = out / "user_home_locations.csv"
    if homes_csv.exists():
        res["homes"] = str(homes_csv)
    return res


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print and save the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100000,1000000,6300000", help="comma-separated user counts")
    p.add_argument("--backends", default="embedded,postgres", help="homeloc backends to run")
    p.add_argument("--seed", type=int, default=0, help="generator seed")
    p.add_argument(
        "--seed-sample", type=int, default=2000, help="users for the seed loop (0: skip)"
    )
    p.add_argument("--skip-peers", action="store_true", help="no PostGIS peer, no seed loop")
    p.add_argument("--skip-postgis", action="store_true", help="no PostGIS peer")
    p.add_argument("--skip-homeloc", action="store_true", help="peers only")
    p.add_argument("--batch-users", type=int, default=0, help="pass --batch-users to homeloc")
    p.add_argument("--workers", type=int, default=0, help="pass --workers to homeloc")
    p.add_argument("--regenerate", action="store_true", help="regenerate the synthetic files")
    p.add_argument(
        "--explicit-max",
        type=int,
        default=None,
        help="synth explicit_max (0: every HLL SPARSE/FULL, like the seed's \\x138b7f values)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="markdown file (default results/<date>.md)"
    )
    args = p.parse_args(argv)
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if args.skip_homeloc:
        backends = []
    if backends and not (VENV_BIN / "homeloc").exists():
        log(f"no {VENV_BIN / 'homeloc'}: skipping homeloc")
        backends = []

    started = time.strftime("%Y-%m-%d %H:%M")
    rows: list[dict] = []
    raw: list[dict] = []
    out = args.out or RESULTS_DIR / f"{time.strftime('%Y-%m-%d_%H%M')}.md"

    def render() -> str:
        header = (
            f"# homeloc end-to-end benchmark, {started}\n\n"
            f"Machine: {os.cpu_count()} cores, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, "
            f"{platform.platform()}, Python {platform.python_version()}.\n"
            f"Command: `{' '.join([sys.executable, *sys.argv])}`\n\n"
            "vs_postgis / vs_truth: users whose home country differs "
            "(of the users both answers have).\n\n"
        )
        return header + markdown_table(rows, COLUMNS) + "\n"

    def save() -> Path:
        """Write what is measured so far (after every step: a long run keeps its figures)."""
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render())
        out.with_suffix(".json").write_text(json.dumps(raw, indent=2, default=str))
        return out

    for si, n in enumerate(sizes):
        path, gen = ensure_data(n, args.seed, args.regenerate, args.explicit_max)
        raw.append({"users": n, "data": str(path), "generate": gen})
        if gen.get("generated"):
            rows.append(
                {
                    "users": f"{n:,}",
                    "system": "synth.generate",
                    "wall_s": f"{gen['seconds']:.1f}",
                    "users_per_s": f"{n / gen['seconds']:,.0f}",
                    "notes": f"{gen['rows']:,} rows, {gen['bytes'] / 1e6:,.0f} MB",
                }
            )
        truth = _truth(path)
        reference = None
        r = None
        if not args.skip_peers and not args.skip_postgis:
            import peer_postgis

            ref_csv = DATA_DIR / f"peer_postgis_{path.stem}.csv"
            try:
                r = peer_postgis.run(path, out=ref_csv)
            except Exception as exc:  # noqa: BLE001 - record the failure, go on with the rest
                log(f"peer_postgis failed: {exc}")
                rows.append(
                    {"users": f"{n:,}", "system": "PostGIS + hll", "notes": f"FAILED: {exc}"}
                )
                save()
                r = None
        if r is not None:
            reference = pd.read_csv(ref_csv, dtype=str, keep_default_na=False)
            r["vs_truth"] = compare_homes(reference, truth)
            raw.append({"users": n, "peer_postgis": r})
            rows.append(
                {
                    "users": f"{n:,}",
                    "system": "PostGIS + hll (COPY + query)",
                    "wall_s": f"{r['total_s']:.1f}",
                    "users_per_s": f"{r['users_per_s']:,.0f}",
                    "vs_postgis": "(reference)",
                    "vs_truth": _mismatch_text(r["vs_truth"]),
                    "notes": f"COPY {r['copy_s']:.1f} s, query {r['query_s']:.1f} s; "
                    f"countries+subdivide+GiST {r['countries_s']:.1f} s "
                    f"({r['country_parts']} parts); server RSS not measured",
                }
            )
            save()
        if not args.skip_peers and args.seed_sample > 0 and si == 0:
            import peer_seed_loop

            r = peer_seed_loop.run(path, args.seed_sample, dsn=dsn())
            homes = pd.DataFrame(r.pop("homes"), columns=["user_guid", "country", "userdays"])
            sample_truth = truth[truth["user_guid"].isin(set(homes["user_guid"]))]
            r["vs_truth"] = compare_homes(homes, sample_truth)
            raw.append({"users": n, "peer_seed_loop": r})
            rows.append(
                {
                    "users": f"{r['users']:,} (sample)",
                    "system": "seed loop (sjoin per user, 1 round trip per user x country)",
                    "wall_s": f"{r['loop_s']:.1f}",
                    "users_per_s": f"{r['users_per_s']:,.1f}",
                    "vs_truth": _mismatch_text(r["vs_truth"]),
                    "notes": f"{r['round_trips']:,} round trips; 6.3 M users would take "
                    f"~{r['extrapolated_6_3M_h']:.1f} h",
                }
            )
            save()
        for backend in backends:
            r = bench_homeloc(path, n, backend, args)
            row = {
                "users": f"{n:,}",
                "system": r["system"],
                "wall_s": f"{r['wall_s']:.1f}",
                "peak_tree_rss_mb": f"{r['peak_tree_rss_mb']:,.0f}",
                "max_proc_rss_mb": (
                    f"{r['max_proc_rss_mb']:,.0f}" if r["max_proc_rss_mb"] is not None else ""
                ),
            }
            if r["returncode"] != 0:
                row["notes"] = f"FAILED (exit {r['returncode']})"
            else:
                row["users_per_s"] = f"{r['users_per_s']:,.0f}"
                if "homes" in r:
                    mine = pd.read_csv(r["homes"], dtype=str, keep_default_na=False)
                    r["vs_truth"] = compare_homes(mine, truth)
                    row["vs_truth"] = _mismatch_text(r["vs_truth"])
                    if reference is not None:
                        r["vs_postgis"] = compare_homes(mine, reference)
                        row["vs_postgis"] = _mismatch_text(r["vs_postgis"])
            raw.append({"users": n, "homeloc": r})
            rows.append(row)
            save()

    log(f"wrote {save()}")
    print(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
