"""Where the time of ``homeloc run`` goes, per shape: cProfile of one run with one worker, by phase.

Owns the per-shape profiles of issue 16. For each ``homeloc synth --shape``
it generates ``--users`` users (or takes ``--input``), runs
``python -m cProfile -m homeloc_assets.cli run --workers 1 --quiet`` into a
fresh folder (one worker: the batches run in the main process, so the profile
sees them; Dagster materialises in process), and prints

* the phases: the asset bodies of ``homeloc_assets/defs`` and the per-batch
  ``batch_runner._compute``, cumulative seconds;
* under each phase, its largest callees (cumulative seconds of that call
  edge), two levels deep;
* the functions with the most self time over the whole run.

cProfile's overhead inflates Python-heavy parts (Dagster's event machinery,
per-row loops) more than numpy/pyarrow calls; the shares, not the absolute
seconds, are what to read.

Usage: ``python benchmarks/profile_shapes.py [--users 200000] [--shapes default,seed,heavy]``.
"""

from __future__ import annotations

import argparse
import os
import pstats
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import DATA_DIR, log  # noqa: E402

PHASE_FILES = ("homeloc_assets/defs/",)
PHASE_EXTRA = {
    ("batch_runner.py", "_compute"),
    ("batches.py", "_run_batch_step"),
    ("landscape.py", "_landscape_batch_step"),
}
SKIP_NAMES = {"<lambda>", "<genexpr>", "<listcomp>", "<dictcomp>"}


def _label(func: tuple) -> str:
    path, line, name = func
    if path == "~":
        return name
    parts = Path(path).parts
    if "homeloc_assets" in parts:
        short = "/".join(parts[parts.index("homeloc_assets") + 1 :])
    elif "site-packages" in parts:
        short = "/".join(parts[parts.index("site-packages") + 1 :][:2])
    else:
        short = Path(path).name
    return f"{short}:{name}"


def _is_phase(func: tuple) -> bool:
    path, _, name = func
    if (Path(path).name, name) in PHASE_EXTRA:
        return True
    if name in SKIP_NAMES or name.startswith("_"):
        return False
    return any(p in path for p in PHASE_FILES)


def report(prof: Path, wall: float, min_s: float = 0.2) -> str:
    """The phase / callee / self-time report of one profile as markdown text."""
    st = pstats.Stats(str(prof))
    st.calc_callees()
    stats, callees = st.stats, st.all_callees
    total = max(v[3] for v in stats.values())
    lines = [f"wall {wall:.1f} s (under cProfile); profiled total {total:.1f} s", ""]
    phases = sorted(
        (f for f in stats if _is_phase(f) and stats[f][3] >= min_s),
        key=lambda f: -stats[f][3],
    )
    lines.append("Phases (cumulative s) and their largest callees:")
    lines.append("")
    for f in phases:
        lines.append(f"- **{_label(f)}** {stats[f][3]:.2f} s ({stats[f][1]} calls)")
        for child, edge in _top_callees(callees, f, 6, min_s):
            lines.append(f"  - {_label(child)} {edge:.2f} s")
            for grand, e2 in _top_callees(callees, child, 4, max(min_s, 0.1 * edge)):
                lines.append(f"    - {_label(grand)} {e2:.2f} s")
    lines.append("")
    lines.append("Most self time (s):")
    lines.append("")
    for f in sorted(stats, key=lambda f: -stats[f][2])[:15]:
        lines.append(f"- {_label(f)} {stats[f][2]:.2f} s ({stats[f][1]} calls)")
    return "\n".join(lines)


def _top_callees(callees: dict, f: tuple, n: int, min_s: float) -> list[tuple[tuple, float]]:
    kids = callees.get(f, {})
    out = []
    for child, edge in kids.items():
        ct = edge[3] if isinstance(edge, tuple) else 0.0
        if ct >= min_s:
            out.append((child, ct))
    return sorted(out, key=lambda x: -x[1])[:n]


def profile_run(path: Path, work: Path) -> tuple[Path, float]:
    """cProfile of ``homeloc run --workers 1`` on ``path``; (profile file, wall seconds)."""
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    prof = work / "run.prof"
    cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "homeloc_assets.cli"]
    cmd += ["run", "--input", str(path), "--out", str(out), "--workers", "1", "--quiet"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"homeloc run failed: {res.stderr[-2000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return prof, wall


def main(argv: list[str] | None = None) -> int:
    """Profile each shape and print the reports."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=200_000)
    p.add_argument("--shapes", default="default,seed,heavy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample", action="store_true", help="also the 20k sample of make run")
    p.add_argument("--out", type=Path, default=None, help="also write the reports here")
    args = p.parse_args(argv)
    from homeloc_assets import synth

    texts = []
    jobs = [(s.strip(), args.users, args.seed) for s in args.shapes.split(",") if s.strip()]
    if args.sample:
        jobs.append(("default", 20_000, 7))
    for shape, users, seed in jobs:
        work = DATA_DIR / f"profile_{shape}_{users}"
        work.mkdir(parents=True, exist_ok=True)
        path = work / "in.csv"
        log(f"{shape}: generating {users:,} users")
        s = synth.generate(users, path, seed=seed, **synth.SHAPES[shape])
        la = os.getloadavg()[0]
        log(f"{shape}: profiling homeloc run")
        prof, wall = profile_run(path, work)
        text = (
            f"### {shape}: {s.describe().split(' -> ')[0]}\n\n"
            f"load average {la:.1f}–{os.getloadavg()[0]:.1f}\n\n" + report(prof, wall)
        )
        print(text + "\n", flush=True)
        texts.append(text)
        shutil.rmtree(work, ignore_errors=True)
    if args.out:
        args.out.write_text("\n\n".join(texts) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
