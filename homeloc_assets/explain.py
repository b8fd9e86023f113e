"""``homeloc explain USER_GUID --input FILE``: why does this user get this home?

Finds the user by binary search in the sorted file (reads only the user's
lines and a few probes, never the whole file), assigns the points to countries
like the pipeline does (same polygons, same "lowest country index containing
the point" rule), unions the HLLs per country with the embedded engine and
prints the countries with their distinct userdays, the home, the runner-up,
the margin, a tie and the Local/Tourist decision. ``--out map.png`` draws the
user's points on a map zoomed to their extent with the home country filled.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@dataclass
class Explanation:
    """Everything ``explain`` knows about one user."""

    user_guid: str
    rows: pa.Table  # the user's valid rows (user_guid, latitude, longitude, hll, line)
    rejects: pa.Table  # the user's rejected lines
    country_index: np.ndarray  # per row: index into the countries, -1 = in no country
    per_country: pa.Table  # country, country_code, userdays, locations (most userdays first)
    total_userdays: float  # distinct userdays over all countries (union of every HLL in a country)
    home: dict | None  # the pick_homes row, or None when no point is in a country
    classification: str | None  # Local / Tourist / undetermined, None without a home
    study_country: tuple[str, str]  # (name, code)

    @property
    def found(self) -> bool:
        """Whether the file has any line of this user."""
        return self.rows.num_rows > 0 or self.rejects.num_rows > 0

    def reason(self) -> str:
        """The decision in one or two sentences."""
        if not self.found:
            return "user not in the file"
        if self.home is None:
            return "no home: none of the user's points lies in a country"
        h = self.home
        ud = _fmt_days(h["userdays"])
        text = f"home {h['country']} ({h['country_code']}): {ud} distinct userdays"
        if h["runner_up"] is None:
            text += ", the only country with points"
        elif h["tie"]:
            text += (f", tied with {h['runner_up']} ({_fmt_days(h['runner_up_userdays'])}); "
                     "the tie goes to the first country by name")
        else:
            text += (f", {_fmt_days(h['margin'])} more than the runner-up {h['runner_up']} "
                     f"({_fmt_days(h['runner_up_userdays'])})")
        name, code = self.study_country
        if self.classification == "undetermined":
            text += (f". undetermined: {_fmt_days(self.total_userdays)} distinct userdays in all, "
                     "below --min-userdays")
        elif self.classification == "Local":
            text += f". Local: the home is the study country {name} ({code})"
        elif self.classification == "Tourist":
            text += f". Tourist: the home is not the study country {name} ({code})"
        return text


def _fmt_days(v: float) -> str:
    v = float(v)
    return f"{v:.0f}" if v == round(v) else f"{v:.2f}"


def load_countries(settings=None):
    """The dissolved countries the pipeline uses (same file, same order, same ids)."""
    from homeloc_assets.geo import dissolve_countries, load_world_countries
    from homeloc_assets.settings import Settings

    s = settings or Settings.from_env()
    world = load_world_countries(
        s.countries_path or None,
        name_column=s.countries_name_column,
        code_column=s.countries_code_column,
    )
    return dissolve_countries(world)


def explain_user(
    path: str | Path,
    user_guid: str,
    countries,
    study_country: str = "Germany",
    min_userdays: float = 0.0,
    found=None,
) -> Explanation:
    """Find ``user_guid`` in the sorted ``path`` and explain its home against ``study_country``.

    ``found``: the user's ``find_user`` result when the caller already has it.
    """
    from homeloc_assets.backends.embedded import EmbeddedBackend
    from homeloc_assets.geo import exact_lookup, resolve_country
    from homeloc_assets.inference import classify_homes, country_userdays, pick_homes
    from homeloc_assets.inputs import find_user

    study = resolve_country(countries, study_country)
    if found is None:
        found = find_user(path, user_guid, global_lines=False)
    rows = found.rows
    names = countries["country"].to_numpy(dtype=object)
    codes = countries["country_code"].to_numpy(dtype=object)
    lon = rows.column("longitude").to_numpy()
    lat = rows.column("latitude").to_numpy()
    cidx = exact_lookup(np.asarray(countries.geometry.array, dtype=object), lon, lat)
    per_country, per_user = country_userdays(
        rows.column("user_guid").combine_chunks(),
        cidx,
        rows.column("hll").combine_chunks(),
        names,
        codes,
        EmbeddedBackend(),
    )
    homes = pick_homes(per_country, per_user)
    home = homes.to_pylist()[0] if homes.num_rows else None
    cls = None
    if home is not None:
        cls = classify_homes(homes, study[1], min_userdays).column("classification")[0].as_py()
    table = per_country.select(["country", "country_code", "userdays", "locations"])
    if table.num_rows:
        table = table.sort_by([("userdays", "descending"), ("country", "ascending")])
    total = float(per_user.column("total_userdays")[0].as_py()) if per_user.num_rows else 0.0
    return Explanation(str(user_guid), rows, found.rejects, np.asarray(cidx), table, total,
                       home, cls, study)


# ------------------------------------------------------------------- output
def print_explanation(ex: Explanation, console=None) -> None:
    """The countries table and the decision, with rich."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    n_none = int((ex.country_index < 0).sum())
    console.print(
        f"[bold]{ex.user_guid}[/bold]: {ex.rows.num_rows} location row(s)"
        + (f", {n_none} in no country" if n_none else "")
        + (f", {ex.rejects.num_rows} rejected line(s)" if ex.rejects.num_rows else "")
    )
    table = Table(title="distinct userdays per country (hll_cardinality of the union)")
    table.add_column("country")
    table.add_column("code")
    table.add_column("locations", justify="right")
    table.add_column("distinct userdays", justify="right")
    table.add_column("share", justify="right")
    home_code = ex.home["country_code"] if ex.home else None
    for r in ex.per_country.to_pylist():
        share = r["userdays"] / ex.total_userdays if ex.total_userdays else float("nan")
        style = "bold green" if r["country_code"] == home_code else None
        table.add_row(r["country"], r["country_code"], str(r["locations"]),
                      _fmt_days(r["userdays"]), f"{share:.1%}", style=style)
    console.print(table)
    console.print(
        f"all countries together: {_fmt_days(ex.total_userdays)} distinct userdays "
        "(a day spent in two countries counts once, so shares can add up to more than 100%)"
    )
    if ex.rejects.num_rows:
        for r in ex.rejects.to_pylist()[:5]:
            console.print(f"  rejected: {r.get('reason')}: {str(r.get('raw'))[:80]}")
    console.print(f"[bold]decision[/bold]: {ex.reason()}")


def draw_map(ex: Explanation, countries, out: str | Path) -> Path:
    """The user's points on a map zoomed to them, home filled; PNG (or SVG by suffix)."""
    from homeloc_assets import plots
    from homeloc_assets.atomic import atomic_path
    from homeloc_assets.hll import cardinality

    lon = ex.rows.column("longitude").to_numpy()
    lat = ex.rows.column("latitude").to_numpy()
    days = np.array([cardinality(v) or 0.0 for v in ex.rows.column("hll").to_pylist()], dtype=float)
    home = ex.home
    title = f"user {ex.user_guid}"
    if home is not None:
        title += f"\nhome {home['country']}: {_fmt_days(home['userdays'])} distinct userdays"
        if ex.classification:
            title += f" — {ex.classification}"
    home_idx = None
    if home is not None:
        codes = countries["country_code"].to_numpy(dtype=object)
        home_idx = int(np.flatnonzero(codes == home["country_code"])[0])
    in_home = ex.country_index == home_idx if home_idx is not None else None
    label = f"in {home['country']}" if home else "home country"
    fig = plots.user_map(countries, lon, lat, home["country_code"] if home else None, title,
                         userdays=days, in_home=in_home, home_label=label)
    out = Path(out)
    fmt = out.suffix.lstrip(".").lower() or "png"
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=fmt, dpi=120)
    return out


# ---------------------------------------------------------------------- CLI
def add_parser(subparsers) -> None:
    """Register ``homeloc explain``."""
    p = subparsers.add_parser(
        "explain",
        help="show how one user's home and Local/Tourist decision come about",
        description="Find one user in a userdays CSV sorted by user_guid (by binary search, "
        "without reading the whole file) and explain the home country decision.",
    )
    p.add_argument("user_guid", help="the user's user_guid as in the file")
    p.add_argument("--input", required=True, help="userdays CSV sorted by user_guid")
    p.add_argument("--out", default=None, help="draw the user's points to this PNG (or .svg)")
    p.add_argument("--study-country", default=None,
                   help="name or ISO alpha-3 code (default: HOMELOC_STUDY_COUNTRY or Germany)")
    p.add_argument("--min-userdays", type=float, default=None,
                   help="below this many distinct userdays: undetermined (default: "
                        "HOMELOC_MIN_USERDAYS or 0)")


def cmd_explain(args) -> int:
    """Run ``homeloc explain``; 0 = explained, 2 = unknown user or bad arguments."""
    from rich.console import Console

    from homeloc_assets.geo import CountryError
    from homeloc_assets.inputs import InputError, find_user
    from homeloc_assets.settings import Settings

    err = Console(stderr=True, soft_wrap=True)
    path = Path(args.input)
    if not path.is_file():
        err.print(f"homeloc: error: input file not found: {path}")
        return EXIT_USAGE
    try:
        settings = Settings.from_env().with_(study_country=args.study_country,
                                             min_userdays=args.min_userdays)
        found = find_user(path, args.user_guid)
        if found.rows.num_rows == 0 and found.rejects.num_rows == 0:
            err.print(f"homeloc: error: user {args.user_guid!r} is not in {path} "
                      "(user_guid must match exactly; the file must be sorted by user_guid)")
            return EXIT_USAGE
        countries = load_countries(settings)
        ex = explain_user(path, args.user_guid, countries, settings.study_country,
                          settings.min_userdays, found=found)
    except (ValueError, CountryError, InputError) as exc:
        err.print(f"homeloc: error: {exc}")
        return EXIT_USAGE
    print_explanation(ex, Console(soft_wrap=True))
    if args.out:
        out = draw_map(ex, countries, args.out)
        print(f"map: {out}", file=sys.stdout)
    return EXIT_OK
