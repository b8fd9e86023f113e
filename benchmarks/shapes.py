"""Speed on the real shape (issue 16): homeloc vs the PostGIS peer vs a bare pyarrow parse, per shape.

Owns the per-shape figures. For each ``homeloc synth --shape`` (default, seed,
heavy) it generates one file of ``--users`` users into ``benchmarks/data/``,
then on that same file, one after the other in the same run:

* ``homeloc run`` into a fresh output folder (wall time; largest single
  process from ``/usr/bin/time -v``; peak RSS of the process tree polled from
  /proc), its homes compared with the truth and with the peer's;
* the all-in-PostgreSQL/PostGIS peer (``peer_postgis.py``, the query of
  ``run.py``) as a subprocess: COPY and query seconds, and the largest RSS of a
  PostgreSQL server process polled from /proc meanwhile (``VmRSS``, which
  includes the shared buffers the process touched, and ``RssAnon``, its
  private memory);
* pyarrow's bare ``pyarrow.csv.read_csv`` of the file on 2 threads (types
  inferred, nothing else), the floor of reading it at all.

Then the 20,000-user sample of ``make run`` (``homeloc synth --users 20000
--seed 7``) end to end twice into one fresh output folder (the second run
resumes: every batch is already finished). The load average is recorded
around every measurement. A markdown table goes to stdout and to
``benchmarks/results/shapes_<date>.md`` (raw figures as JSON next to it).

With ``--readme`` the table also replaces the one between the
``shapes.py`` markers of ``benchmarks/README.md`` (the prose around it, with
the load and the findings, stays to be updated by hand).

Usage: ``python benchmarks/shapes.py [--users 200000] [--shapes default,seed,heavy]
[--keep-data] [--skip-sample] [--readme]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402
from _common import (  # noqa: E402
    DATA_DIR,
    HERE,
    RESULTS_DIR,
    VENV_BIN,
    compare_homes,
    log,
    markdown_table,
    run_measured,
)

COLUMNS = [
    "shape",
    "file",
    "system",
    "wall_s",
    "users_per_s",
    "max_proc_rss_mb",
    "peak_tree_rss_mb",
    "load",
    "vs_truth",
    "vs_postgis",
    "notes",
]

PARSE = """
import sys, time
import pyarrow as pa, pyarrow.csv as pacsv
pa.set_cpu_count(2)
pa.set_io_thread_count(2)
t0 = time.perf_counter()
t = pacsv.read_csv(sys.argv[1])
print(f"{time.perf_counter() - t0:.3f} {t.num_rows} {t.nbytes}")
"""


def load() -> str:
    """The 1-minute load average as text."""
    return f"{os.getloadavg()[0]:.1f}"


def _pg_rss_kb() -> tuple[int, int]:
    """Largest VmRSS and largest RssAnon (kB) over the PostgreSQL server's processes."""
    rss = anon = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read()
            if not (cmd.startswith(b"postgres") or b"/postgres" in cmd.split(b"\0")[0]):
                continue
            with open(f"/proc/{entry}/status", "rb") as fh:
                for line in fh:
                    if line.startswith(b"VmRSS:"):
                        rss = max(rss, int(line.split()[1]))
                    elif line.startswith(b"RssAnon:"):
                        anon = max(anon, int(line.split()[1]))
        except (OSError, ValueError, IndexError):
            continue
    return rss, anon


def _mismatch(cmp: dict | None) -> str:
    if cmp is None:
        return ""
    extra = [f"{cmp[k]} {k}" for k in ("missing", "extra") if cmp[k]]
    return f"{cmp['mismatches']} of {cmp['users_compared']:,}" + (
        f" ({', '.join(extra)})" if extra else ""
    )


def synth_file(shape: str, users: int, seed: int) -> tuple[Path, dict]:
    """Generate the ``shape`` file with ``homeloc synth`` (measured subprocess)."""
    path = DATA_DIR / f"shape_{shape}_{users}_seed{seed}.csv"
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    cmd = [str(VENV_BIN / "homeloc"), "synth", "--users", str(users), "--out", str(path)]
    cmd += ["--seed", str(seed), "--shape", shape]
    before = load()
    m = run_measured(cmd)
    if m.returncode != 0:
        raise RuntimeError(f"homeloc synth failed: {m.stderr[-2000:]}")
    return path, {
        "cmd": " ".join(cmd),
        "wall_s": m.seconds,
        "max_proc_rss_mb": m.max_rss_mb,
        "load": f"{before}–{load()}",
        "summary": m.stdout.strip().splitlines()[0],
        "bytes": path.stat().st_size,
    }


def homeloc_run(path: Path, out: Path, fresh: bool = True, extra: list[str] | None = None) -> dict:
    """``homeloc run`` on ``path`` into ``out`` (removed first when ``fresh``)."""
    if fresh:
        shutil.rmtree(out, ignore_errors=True)
    cmd = [str(VENV_BIN / "homeloc"), "run", "--input", str(path), "--out", str(out), "--quiet"]
    cmd += extra or []
    before = load()
    m = run_measured(cmd)
    res = {
        "cmd": " ".join(cmd),
        "returncode": m.returncode,
        "wall_s": m.seconds,
        "max_proc_rss_mb": m.max_rss_mb,
        "peak_tree_rss_mb": m.peak_tree_rss_mb,
        "load": f"{before}–{load()}",
        "stdout_tail": m.stdout.strip().splitlines()[-6:],
    }
    if m.returncode != 0:
        res["stderr_tail"] = m.stderr.strip().splitlines()[-15:]
        log(f"homeloc run failed ({m.returncode}): " + "\n".join(res["stderr_tail"]))
    return res


def postgis_peer(path: Path, ref_csv: Path) -> dict:
    """``peer_postgis.py`` as a subprocess, with the PostgreSQL server's RSS polled meanwhile."""
    cmd = [sys.executable, str(HERE / "peer_postgis.py"), str(path), "--out", str(ref_csv)]
    peak = [0, 0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            rss, anon = _pg_rss_kb()
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], anon)
            done.wait(0.2)

    w = threading.Thread(target=watch, daemon=True)
    before = load()
    w.start()
    m = run_measured(cmd)
    done.set()
    w.join()
    res = {
        "cmd": " ".join(cmd),
        "returncode": m.returncode,
        "wall_s": m.seconds,
        "client_max_rss_mb": m.max_rss_mb,
        "server_max_rss_mb": peak[0] / 1024,
        "server_max_anon_mb": peak[1] / 1024,
        "load": f"{before}–{load()}",
    }
    for line in m.stdout.splitlines():
        k, _, v = line.partition(": ")
        if k in ("copy_s", "query_s", "countries_s", "total_s", "users_per_s"):
            res[k] = float(v)
        elif k in ("rows", "users", "homes", "country_parts"):
            res[k] = int(v)
    if m.returncode != 0:
        res["stderr_tail"] = m.stderr.strip().splitlines()[-10:]
    return res


def arrow_parse(path: Path) -> dict:
    """pyarrow's ``read_csv`` of ``path`` on 2 threads in a fresh process."""
    before = load()
    m = run_measured([sys.executable, "-c", PARSE, str(path)])
    secs, rows, nbytes = m.stdout.split()
    return {
        "wall_s": float(secs),
        "process_s": m.seconds,
        "rows": int(rows),
        "table_mb": int(nbytes) / 1e6,
        "max_proc_rss_mb": m.max_rss_mb,
        "load": f"{before}–{load()}",
    }


def _truth(path: Path) -> pd.DataFrame:
    from homeloc_assets.synth import truth_path_for

    t = pd.read_csv(truth_path_for(path), dtype=str, keep_default_na=False)
    return t.rename(columns={"home_country": "country"})


def _homes(out: Path) -> pd.DataFrame | None:
    p = out / "user_home_locations.csv"
    return pd.read_csv(p, dtype=str, keep_default_na=False) if p.exists() else None


def put_in_readme(table: str, readme: Path = HERE / "README.md") -> None:
    """Replace the table between ``<!-- shapes.py:start -->`` and ``:end -->`` in ``readme``."""
    start, end = "<!-- shapes.py:start -->", "<!-- shapes.py:end -->"
    text = readme.read_text()
    i, j = text.index(start) + len(start), text.index(end)
    readme.write_text(text[:i] + "\n" + table + "\n" + text[j:])


def main(argv: list[str] | None = None) -> int:
    """Run the per-shape benchmark; print and save the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=200_000)
    p.add_argument("--shapes", default="default,seed,heavy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-sample", action="store_true", help="no 20k sample runs")
    p.add_argument("--skip-postgis", action="store_true")
    p.add_argument("--keep-data", action="store_true", help="keep the generated files")
    p.add_argument("--out", type=Path, default=None, help="markdown file")
    p.add_argument(
        "--readme",
        action="store_true",
        help="also put the table between the shapes.py markers of benchmarks/README.md",
    )
    args = p.parse_args(argv)
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out_md = args.out or RESULTS_DIR / f"shapes_{time.strftime('%Y-%m-%d_%H%M')}.md"
    rows: list[dict] = []
    raw: list[dict] = []

    def render() -> str:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        head = (
            f"# homeloc per-shape benchmark, {started}\n\n"
            f"Machine: {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.platform()}, "
            f"Python {platform.python_version()}. load = 1-min load average before–after.\n"
            f"Command: `{' '.join([sys.executable, *sys.argv])}`\n\n"
        )
        return head + markdown_table(rows, COLUMNS) + "\n"

    def save() -> None:
        out_md.parent.mkdir(parents=True, exist_ok=True)
        out_md.write_text(render())
        out_md.with_suffix(".json").write_text(json.dumps(raw, indent=2, default=str))

    made: list[Path] = []
    for shape in shapes:
        log(f"{shape}: generating {args.users:,} users")
        path, gen = synth_file(shape, args.users, args.seed)
        made.append(path)
        fdesc = f"{gen['bytes'] / 1e6:,.0f} MB"
        raw.append({"shape": shape, "generate": gen})
        log(gen["summary"])
        rows.append(
            {
                "shape": shape,
                "file": fdesc,
                "system": "homeloc synth",
                "wall_s": f"{gen['wall_s']:.1f}",
                "users_per_s": f"{args.users / gen['wall_s']:,.0f}",
                "max_proc_rss_mb": f"{gen['max_proc_rss_mb']:,.0f}",
                "load": gen["load"],
                "notes": gen["summary"].split(" -> ")[0].split("), ", 1)[-1],
            }
        )
        save()
        truth = _truth(path)
        log(f"{shape}: pyarrow parse")
        a = arrow_parse(path)
        raw.append({"shape": shape, "arrow": a})
        rows.append(
            {
                "shape": shape,
                "file": fdesc,
                "system": "pyarrow read_csv, 2 threads",
                "wall_s": f"{a['wall_s']:.2f}",
                "users_per_s": f"{args.users / a['wall_s']:,.0f}",
                "max_proc_rss_mb": f"{a['max_proc_rss_mb']:,.0f}",
                "load": a["load"],
                "notes": f"{a['rows']:,} rows; process incl. imports {a['process_s']:.1f} s",
            }
        )
        save()
        log(f"{shape}: homeloc run")
        out = DATA_DIR / f"out_shape_{shape}"
        h = homeloc_run(path, out)
        homes = _homes(out) if h["returncode"] == 0 else None
        h["vs_truth"] = compare_homes(homes, truth) if homes is not None else None
        raw.append({"shape": shape, "homeloc": h})
        save()
        ref = None
        if not args.skip_postgis:
            log(f"{shape}: PostGIS peer")
            ref_csv = DATA_DIR / f"peer_postgis_shape_{shape}.csv"
            g = postgis_peer(path, ref_csv)
            raw.append({"shape": shape, "postgis": g})
            if g["returncode"] == 0:
                ref = pd.read_csv(ref_csv, dtype=str, keep_default_na=False)
                g["vs_truth"] = compare_homes(ref, truth)
                rows.append(
                    {
                        "shape": shape,
                        "file": fdesc,
                        "system": "PostGIS + hll (COPY + query)",
                        "wall_s": f"{g['total_s']:.1f}",
                        "users_per_s": f"{g['users_per_s']:,.0f}",
                        "max_proc_rss_mb": f"server {g['server_max_rss_mb']:,.0f} "
                        f"(private {g['server_max_anon_mb']:,.0f})",
                        "load": g["load"],
                        "vs_truth": _mismatch(g["vs_truth"]),
                        "vs_postgis": "(reference)",
                        "notes": f"COPY {g['copy_s']:.1f} s + query {g['query_s']:.1f} s; "
                        f"countries into PostGIS {g['countries_s']:.1f} s not counted",
                    }
                )
            else:
                rows.append(
                    {
                        "shape": shape,
                        "system": "PostGIS + hll",
                        "notes": "FAILED: " + " / ".join(g.get("stderr_tail", [])[-2:]),
                    }
                )
            ref_csv.unlink(missing_ok=True)
        row = {
            "shape": shape,
            "file": fdesc,
            "system": "homeloc run (fresh output)",
            "wall_s": f"{h['wall_s']:.1f}",
            "max_proc_rss_mb": f"{h['max_proc_rss_mb']:,.0f}" if h["max_proc_rss_mb"] else "",
            "peak_tree_rss_mb": f"{h['peak_tree_rss_mb']:,.0f}",
            "load": h["load"],
        }
        if h["returncode"] == 0:
            row["users_per_s"] = f"{args.users / h['wall_s']:,.0f}"
            row["vs_truth"] = _mismatch(h["vs_truth"])
            if ref is not None and homes is not None:
                h["vs_postgis"] = compare_homes(homes, ref)
                row["vs_postgis"] = _mismatch(h["vs_postgis"])
        else:
            row["notes"] = f"FAILED (exit {h['returncode']})"
        rows.append(row)
        save()
        shutil.rmtree(out, ignore_errors=True)

    if not args.skip_sample:
        from homeloc_assets import synth

        sample = DATA_DIR / "sample_20000_seed7.csv"
        if not sample.exists():
            synth.generate(20_000, sample, seed=7)
        made.append(sample)
        out = DATA_DIR / "out_sample"
        shutil.rmtree(out, ignore_errors=True)
        truth = _truth(sample)
        for i, label in ((1, "first run, fresh output"), (2, "second run, same output")):
            log(f"sample: homeloc run ({label})")
            h = homeloc_run(sample, out, fresh=False)
            homes = _homes(out) if h["returncode"] == 0 else None
            h["vs_truth"] = compare_homes(homes, truth) if homes is not None else None
            raw.append({"shape": "sample 20k", "run": i, "homeloc": h})
            rows.append(
                {
                    "shape": "make run sample (20,000 users, default)",
                    "file": f"{sample.stat().st_size / 1e6:,.1f} MB",
                    "system": f"homeloc run ({label})",
                    "wall_s": f"{h['wall_s']:.1f}",
                    "users_per_s": f"{20_000 / h['wall_s']:,.0f}",
                    "max_proc_rss_mb": f"{h['max_proc_rss_mb']:,.0f}",
                    "peak_tree_rss_mb": f"{h['peak_tree_rss_mb']:,.0f}",
                    "load": h["load"],
                    "vs_truth": _mismatch(h["vs_truth"]),
                    "notes": "" if h["returncode"] == 0 else f"FAILED (exit {h['returncode']})",
                }
            )
            save()
        shutil.rmtree(out, ignore_errors=True)

    if not args.keep_data:
        for path in made:
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".truth.csv").unlink(missing_ok=True)
    save()
    if args.readme:
        put_in_readme(markdown_table(rows, COLUMNS))
    log(f"wrote {out_md}")
    print(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
