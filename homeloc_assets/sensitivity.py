"""``homeloc sensitivity`` and ``homeloc validate``: home rules swept over a finished run's homes.

Both read ``user_home_locations.parquet`` of an output folder (the per-user
homes with their evidence) — never the input again — sweep a grid of
:class:`~homeloc_assets.inference.rules.HomeRule` settings and write a table
and a figure.  ``validate`` adds a truth file (``homeloc synth`` writes one)
and reports accuracy, the confusion counts and the undetermined share per
setting.  No Dagster here: the Dagster asset and the CLI both call
:func:`run_sensitivity`.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from homeloc_assets.atomic import atomic_path, remove_temporaries
from homeloc_assets.exports import exports_lock
from homeloc_assets.inference.rules import HomeRule, rule_grid, sensitivity
from homeloc_assets.layout import FIGURES_DIR, OutputLayout

HOMES_FILE = "user_home_locations.parquet"
HOMES_COLUMNS = ["user_guid", "country_code", "userdays", "total_userdays", "home_share",
            "runner_up_userdays", "tie"]
#: what the rules read without a truth to compare with: no ids (at 6.25 M users the
#: 43-character ids were a third of the sweep's memory)
RULE_COLUMNS = [c for c in HOMES_COLUMNS if c != "user_guid"]


@dataclass(frozen=True)
class SensitivityResult:
    """The sweep table and where it was written."""

    table: pa.Table
    csv_path: Path
    figure_path: Path | None


def read_homes(out_dir: str | Path, with_ids: bool = True) -> pa.Table:
    """The columns of the run's homes that the rules need (``user_guid`` too when
    ``with_ids``: to compare with a truth); a clear error when there is no run."""
    path = Path(out_dir) / HOMES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `homeloc run --out {out_dir}` first")
    return pq.read_table(path, columns=HOMES_COLUMNS if with_ids else RULE_COLUMNS)


def read_truth(path: str | Path) -> pa.Table:
    """A truth CSV with ``user_guid`` and ``classification`` (Local/Tourist) columns."""
    table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
        include_columns=["user_guid", "classification"],
        column_types={"user_guid": pa.string(), "classification": pa.string()}))
    return table


def run_sensitivity(
    homes: pa.Table,
    study_code: str,
    chosen: HomeRule,
    out_dir: str | Path,
    *,
    grid: dict[str, list[float]] | None = None,
    truth: pa.Table | None = None,
    log2m: int = 11,
    explicit_max: int = 160,
    name: str = "sensitivity",
    figure: bool = True,
    figure_cache: str | Path | None = None,
) -> SensitivityResult:
    """Sweep ``grid`` (keys ``min_userdays``/``min_share``/``min_margin``) and write CSV + PNG
    (copied from ``figure_cache`` when the same table was drawn before)."""
    rules = rule_grid(chosen, **(grid or {}))
    if chosen not in rules:
        rules.append(chosen)
    table = sensitivity(homes, study_code, rules, chosen, log2m=log2m, explicit_max=explicit_max,
                        truth=truth)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"{name}.csv"
    figures = out / FIGURES_DIR
    fig_path = None
    # under the exports lock: no other writer of these files can be alive, so the
    # temporaries a killed writer (kill -9 while writing them) left can go
    with exports_lock(out):
        for target in (csv_path, figures / f"{name}.png", figures / f"{name}.svg"):
            remove_temporaries(target)
        with atomic_path(csv_path) as tmp:
            pacsv.write_csv(table, tmp)
        if figure:
            from homeloc_assets.figure_cache import cached_figure_files

            paths, _ = cached_figure_files(sensitivity_figure, (table, chosen), name=name,
                                           out_dir=figures, cache_dir=figure_cache)
            fig_path = paths["png"]
    return SensitivityResult(table, csv_path, fig_path)


def sensitivity_figure(table: pa.Table, chosen: HomeRule):
    """Lines per minimum share: classified users, Local:Tourist ratio and changed share
    (and accuracy, when the table has it) against the minimum userdays; margin as chosen."""
    from matplotlib.figure import Figure

    rows = [r for r in table.to_pylist() if r["min_margin"] == chosen.min_margin]
    panels = [("classified", "users classified"), ("local_tourist_ratio", "Local : Tourist"),
              ("changed_share", "share of users whose class changes")]
    if "accuracy" in table.column_names:
        panels.append(("accuracy", "accuracy on truth"))
    fig = Figure(figsize=(4.2 * len(panels), 3.8), layout="constrained")
    shares = sorted({r["min_share"] for r in rows})
    for i, (col, label) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for s in shares:
            pts = sorted((r["min_userdays"], r[col]) for r in rows if r["min_share"] == s)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"share ≥ {s:g}")
        ax.axvline(chosen.min_userdays, color="#999999", lw=0.8, ls="--")
        ax.set_xlabel("minimum distinct userdays")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    fig.suptitle(f"Home-rule sensitivity (margin ≥ {chosen.min_margin:g}; dashed: chosen setting)")
    return fig


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers separated by commas") from None
    if not values or not all(math.isfinite(v) and v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers >= 0 separated by commas")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The sweep's flags, shared by ``sensitivity`` and ``validate``."""
    p.add_argument("--out", default="out", help="output folder of a finished `homeloc run`")
    p.add_argument("--to", default=None,
                   help="where the table and figure go (default: OUT/analysis; the published "
                        "set under OUT is never changed)")
    p.add_argument("--study-country", default=None, help="name or ISO code (default: the run's)")
    p.add_argument("--min-userdays", type=float, default=0.0, help="chosen setting")
    p.add_argument("--min-share", type=float, default=0.0, help="chosen setting")
    p.add_argument("--min-margin", type=float, default=0.0, help="chosen setting")
    p.add_argument("--ambiguity-z", type=float, default=1.96, help="0 switches the check off")
    p.add_argument("--grid-userdays", type=_floats, default=[0, 2, 3, 5, 10])
    p.add_argument("--grid-share", type=_floats, default=[0, 0.3, 0.5, 0.7])
    p.add_argument("--grid-margin", type=_floats, default=[0, 1, 2, 5])
    p.add_argument("--no-figures", action="store_true")


def _summary(out_dir: str | Path) -> dict:
    import json

    summary = OutputLayout(out_dir).summary
    return json.loads(summary.read_text()) if summary.is_file() else {}


def _study_code(args: argparse.Namespace) -> str:
    """The study country's code: as given (resolved on the run's countries), else the run's own."""
    summary = OutputLayout(args.out).summary
    info = _summary(args.out)
    if args.study_country is None:
        if "study_country_code" not in info:
            raise FileNotFoundError(f"{summary} has no study country: give --study-country")
        return str(info["study_country_code"])
    import pyarrow.compute as pc

    from homeloc_assets.geo.countries import resolve_country

    seen = pq.read_table(Path(args.out) / "user_country_userdays.parquet",
                         columns=["country", "country_code"])
    seen = pc.unique(pc.binary_join_element_wise(seen["country"], seen["country_code"], "\t"))
    pairs = [v.split("\t") for v in seen.to_pylist()]
    import pandas as pd

    frame = pd.DataFrame(pairs, columns=["country", "country_code"])
    return resolve_country(frame, args.study_country)[1]


def main(args: argparse.Namespace, *, validate: bool = False) -> int:
    """Run ``homeloc sensitivity`` (or ``validate`` with ``args.truth``); print where it went."""
    chosen = HomeRule(min_userdays=args.min_userdays, min_share=args.min_share,
                      min_margin=args.min_margin, ambiguity_z=args.ambiguity_z)
    homes = read_homes(args.out, with_ids=validate)
    truth = read_truth(args.truth) if validate else None
    run = _summary(args.out)
    result = run_sensitivity(
        homes, _study_code(args), chosen, args.to or OutputLayout(args.out).analysis,
        log2m=int(run.get("hll_log2m", 11)), explicit_max=int(run.get("hll_explicit_max", 160)),
        grid={"min_userdays": args.grid_userdays, "min_share": args.grid_share,
              "min_margin": args.grid_margin},
        truth=truth, name="validation" if validate else "sensitivity", figure=not args.no_figures)
    row = next(r for r in result.table.to_pylist()
               if (r["min_userdays"], r["min_share"], r["min_margin"])
               == (chosen.min_userdays, chosen.min_share, chosen.min_margin))
    line = (f"{len(result.table)} settings over {row['users']:,} users; chosen setting: "
            f"{row['classified']:,} classified, {row['locals']:,} Locals, {row['tourists']:,} Tourists")
    if validate:
        line += f", accuracy {row['accuracy']:.3f}, undetermined {row['undetermined_share']:.3f}"
    print(line)
    print(f"table: {result.csv_path}" + (f"  figure: {result.figure_path}" if result.figure_path else ""))
    return 0
