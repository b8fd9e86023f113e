"""Shared helpers of the end-to-end benchmarks: paths, DSNs, measured subprocesses, comparisons.

Owns: where benchmark data and results live, how a subprocess is timed and its
peak memory measured (``/usr/bin/time -v`` for the largest single process plus
/proc polling for the whole process tree), and the user-by-user comparison of
home-country answers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA_DIR = HERE / "data"
RESULTS_DIR = HERE / "results"
VENV_BIN = Path(sys.executable).parent
PG_BASE_DSN = os.environ.get("HOMELOC_BENCH_PG_DSN", "host=127.0.0.1 port=5432 user=postgres")
BENCH_DB = os.environ.get("HOMELOC_BENCH_DB", "homeloc_bench")


def log(msg: str) -> None:
    """A timestamped progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def dsn(dbname: str = BENCH_DB) -> str:
    """DSN of ``dbname`` on the benchmark server."""
    return f"{PG_BASE_DSN} dbname={dbname}"


def ensure_bench_db(dbname: str = BENCH_DB) -> str:
    """Create ``dbname`` with the hll and postgis extensions if needed; return its DSN."""
    import psycopg2

    conn = psycopg2.connect(dsn("postgres"))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
        if cur.fetchone() is None:
            cur.execute(f'CREATE DATABASE "{dbname}"')
    conn.close()
    conn = psycopg2.connect(dsn(dbname))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE EXTENSION IF NOT EXISTS hll")
        cur.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    conn.close()
    return dsn(dbname)


def data_file(n_users: int, seed: int, explicit_max: int | None = None) -> Path:
    """The synthetic input for ``n_users`` users and ``seed`` (generated once, then reused).

    ``explicit_max`` other than the default (None) names a variant file.
    """
    tail = "" if explicit_max is None else f"_xmax{explicit_max}"
    return DATA_DIR / f"synth_{n_users}_seed{seed}{tail}.csv"


def _tree_rss_kb(root: int) -> int:
    """Sum of VmRSS (kB) of ``root`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat = fh.read()
            ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
            with open(f"/proc/{pid}/status", "rb") as fh:
                for line in fh:
                    if line.startswith(b"VmRSS:"):
                        rss[pid] = int(line.split()[1])
                        break
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(pid)
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


@dataclass
class Measured:
    """A finished subprocess: exit code, wall time, memory, output."""

    returncode: int
    seconds: float
    peak_tree_rss_mb: float  # max over time of the summed RSS of the process tree (polled)
    max_rss_mb: float | None  # /usr/bin/time -v: largest single process
    stdout: str
    stderr: str


def run_measured(
    cmd: list[str], env: dict[str, str] | None = None, poll: float = 0.2, cwd: Path | None = None
) -> Measured:
    """Run ``cmd``; measure wall time, peak tree RSS (polling /proc) and max RSS (time -v)."""
    time_bin = Path("/usr/bin/time")
    use_time = time_bin.exists()
    full = [str(time_bin), "-v", *cmd] if use_time else list(cmd)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    )
    peak = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss_kb(proc.pid))
            done.wait(poll)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    done.set()
    watcher.join()
    max_rss = None
    if use_time:
        for line in err.splitlines():
            if "Maximum resident set size" in line:
                max_rss = int(line.rsplit(":", 1)[1]) / 1024
    return Measured(proc.returncode, seconds, peak / 1024, max_rss, out, err)


def compare_homes(
    mine: pd.DataFrame, reference: pd.DataFrame, key: str = "user_guid", col: str = "country"
) -> dict[str, int]:
    """User-by-user comparison of two ``(user_guid, country)`` tables."""
    m = mine[[key, col]].drop_duplicates(key).set_index(key)[col]
    r = reference[[key, col]].drop_duplicates(key).set_index(key)[col]
    both = m.index.intersection(r.index)
    return {
        "users_reference": len(r),
        "users_compared": len(both),
        "missing": int(len(r.index.difference(m.index))),
        "extra": int(len(m.index.difference(r.index))),
        "mismatches": int((m.loc[both] != r.loc[both]).sum()),
    }


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A markdown table of ``rows`` restricted to ``columns``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)
