"""``homeloc explain USER_GUID --input FILE``: why does this user get this home?

Finds the user by binary search in the sorted file (reads only the user's
lines and a few probes, never the whole file) and runs the pipeline's own
batch step (:func:`~homeloc_assets.inference.process_batch`) on exactly those
lines: the same country polygons and "lowest country index containing the
point" rule, the same unions per country and per region of every configured
layer, the same argmax. The decision is the pipeline's home rule
(:func:`~homeloc_assets.inference.rules.apply_rule`, with a study region
:func:`~homeloc_assets.inference.rules.nest_classes`). It prints the
countries with their distinct userdays, the home, the runner-up, the margin,
a tie, the status with its reason and the class, then the home in each region
layer with its status and reason. ``--out map.png`` draws the user's points
on a map framed on them, the user's countries shaded by distinct userdays.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

_REASON_TEXT = {
    "total_userdays_below_min": "distinct userdays in all below --min-userdays",
    "home_share_below_min": "the home's share of the distinct userdays below --min-share",
    "margin_below_min": "the lead over the runner-up below --min-margin",
    "tie": "tied with the runner-up",
    "within_estimator_error": "the top two cannot be told apart given the HyperLogLog error",
}


@dataclass
class LayerExplanation:
    """The user's homes in one region layer (H3 cells or polygons)."""

    name: str
    spec: str
    per_region: pa.Table  # region, region_code, userdays, locations (most userdays first)
    home: dict | None  # the layer's home row with status and reason, None without a region
    locations_no_region: int

    @property
    def status(self) -> str | None:
        return self.home["status"] if self.home else None

    def reason(self) -> str:
        """The layer's decision in one sentence."""
        if self.home is None:
            return "no home region: none of the user's points lies in a region of this layer"
        h = self.home
        named = h["region"] if h["region"] == h["region_code"] else \
            f"{h['region']} ({h['region_code']})"  # H3 cells are named by their index
        text = (f"home region {named}: {_fmt_days(h['userdays'])} "
                f"distinct userdays, {h['home_share']:.1%} of the user's in the layer")
        if h["runner_up_code"] is not None:
            text += (f", {_fmt_days(h['margin'])} more than the runner-up {h['runner_up_code']} "
                     f"({_fmt_days(h['runner_up_userdays'])})")
        text += f"; {h['status']}"
        if h["reason"]:
            text += f" ({h['reason']}: {_REASON_TEXT.get(h['reason'], h['reason'])})"
        return text


@dataclass
class Explanation:
    """Everything ``explain`` knows about one user."""

    user_guid: str
    rows: pa.Table  # the user's valid rows (user_guid, latitude, longitude, hll, line)
    rejects: pa.Table  # the user's rejected lines
    in_country: np.ndarray  # per row: whether the point lies in a country
    per_country: pa.Table  # country, country_code, userdays, locations (most userdays first)
    total_userdays: float  # distinct userdays over all countries (union of every HLL in a country)
    home: dict | None  # the pick_homes row with status and reason, None without a country
    classification: str | None  # Local / Tourist / undetermined (or the nested classes)
    study_country: tuple[str, str]  # (name, code)
    layers: list[LayerExplanation] = field(default_factory=list)

    @property
    def found(self) -> bool:
        """Whether the file has any line of this user."""
        return self.rows.num_rows > 0 or self.rejects.num_rows > 0

    @property
    def status(self) -> str | None:
        """``determined`` / ``undetermined`` / ``ambiguous`` (the home rule), None without a home."""
        return self.home["status"] if self.home else None

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
        why = _REASON_TEXT.get(h["reason"] or "", h["reason"])
        if h["status"] == "undetermined":
            text += f". undetermined: {why} ({h['reason']})"
            return text
        if h["status"] == "ambiguous":
            text += f". ambiguous ({h['reason']}: {why}); the argmax class is kept"
        if self.classification == "Local":
            text += f". Local: the home is the study country {name} ({code})"
        elif self.classification == "Tourist":
            text += f". Tourist: the home is not the study country {name} ({code})"
        elif self.classification:
            text += f". {self.classification}"
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


class _ExactLookup:
    """``lookup(lon, lat)`` over the countries: the lowest index of a country containing the point.

    The pipeline's grid lookup gives the same answer (tested in ``test_geo``)
    but takes seconds to build; for one user's few points this is instant.
    """

    def __init__(self, countries) -> None:
        self.geoms = np.asarray(countries.geometry.array, dtype=object)

    def lookup(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        from homeloc_assets.geo import exact_lookup

        return exact_lookup(self.geoms, lon, lat)


def _hll_params(rows: pa.Table) -> tuple[int, int]:
    """``(log2m, explicit threshold)`` of the user's hll values (the pipeline takes the run's)."""
    from homeloc_assets import hll

    if rows.num_rows == 0:
        return 11, 160
    p = hll.decode(rows.column("hll")[0].as_py()).params
    return p.log2m, p.effective_expthresh


def explain_user(
    path: str | Path,
    user_guid: str,
    countries,
    study_country: str = "Germany",
    min_userdays: float = 0.0,
    found=None,
    *,
    rule=None,
    layers=(),
    study_region: tuple[str, str] | None = None,
) -> Explanation:
    """Find ``user_guid`` in the sorted ``path`` and explain its home against ``study_country``.

    ``found``: the user's ``find_user`` result when the caller already has it;
    ``rule``: the :class:`~homeloc_assets.inference.rules.HomeRule` (default:
    only ``min_userdays``); ``layers``: loaded region layers
    (:func:`homeloc_assets.geo.layers.load_layer`); ``study_region``:
    ``(layer, code)`` for the nested classes, as ``homeloc run --study-region``.
    """
    from homeloc_assets.backends.embedded import EmbeddedBackend
    from homeloc_assets.geo import resolve_country
    from homeloc_assets.geo.layers import LayerSpec, layer_assets, load_layer
    from homeloc_assets.inference import process_batch
    from homeloc_assets.inference.rules import HomeRule, apply_rule, nest_classes
    from homeloc_assets.inputs import find_user

    study = resolve_country(countries, study_country)
    if found is None:
        found = find_user(path, user_guid, global_lines=False)
    rule = rule or HomeRule(min_userdays=float(min_userdays))
    names = countries["country"].to_numpy(dtype=object)
    codes = countries["country_code"].to_numpy(dtype=object)
    specs = {}
    loaded = []
    for layer in layers:  # LayerSpecs are loaded here; loaded layers are used as they are
        if isinstance(layer, LayerSpec):
            specs[layer.name] = layer.spec
            layer = load_layer(layer)
        loaded.append(layer)
    layers = loaded
    if found.end > found.start:
        res = process_batch(path, found.start, found.end, names, codes, _ExactLookup(countries),
                            EmbeddedBackend(), layers)
        per_country, homes, located = res.country_userdays, res.homes, res.locations
        layer_tables = res.layer_tables
    else:
        from homeloc_assets.inference.homes import _empty_homes

        per_country = pa.table({"country": pa.array([], pa.string()),
                                "country_code": pa.array([], pa.string()),
                                "userdays": pa.array([], pa.float64()),
                                "locations": pa.array([], pa.int64())})
        homes, located, layer_tables = _empty_homes(), None, {}
    log2m, explicit_max = _hll_params(found.rows)
    classified = apply_rule(homes, rule, study[1], log2m=log2m, explicit_max=explicit_max)
    layer_out = []
    for layer in layers:
        ud_name, home_name = layer_assets(layer.name)
        region_homes = layer_tables.get(home_name)
        per_region = layer_tables.get(ud_name)
        if region_homes is None:
            continue
        if study_region and study_region[0] == layer.name and classified.num_rows:
            classified = nest_classes(classified, region_homes, study_region[1])
        region_homes = apply_rule(region_homes, rule, None, log2m=log2m,
                                  explicit_max=explicit_max)
        table = per_region.select(["region", "region_code", "userdays", "locations"])
        if table.num_rows:
            table = table.sort_by([("userdays", "descending"), ("region_code", "ascending")])
        in_region = int(pc.sum(per_region.column("locations")).as_py() or 0)
        layer_out.append(LayerExplanation(
            layer.name, specs.get(layer.name, ""), table,
            region_homes.to_pylist()[0] if region_homes.num_rows else None,
            found.rows.num_rows - in_region))
    home = classified.to_pylist()[0] if classified.num_rows else None
    cls = home["classification"] if home else None
    table = per_country.select(["country", "country_code", "userdays", "locations"])
    if table.num_rows:
        table = table.sort_by([("userdays", "descending"), ("country", "ascending")])
    total = float(home["total_userdays"]) if home else 0.0
    in_country = (pc.is_valid(located.column("country_code")).to_numpy(zero_copy_only=False)
                  if located is not None else np.zeros(0, bool))
    return Explanation(str(user_guid), found.rows, found.rejects, np.asarray(in_country, bool),
                       table, total, home, cls, study, layer_out)


# ------------------------------------------------------------------- output
def print_explanation(ex: Explanation, console=None) -> None:
    """The countries table and the decision, then each region layer's home, with rich."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    n_none = int((~ex.in_country).sum())
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
    if ex.home:
        console.print(f"status: {ex.home['status']}"
                      + (f" ({ex.home['reason']})" if ex.home["reason"] else ""))
    console.print(f"[bold]decision[/bold]: {ex.reason()}")
    for lx in ex.layers:
        _print_layer(console, lx)


#: rows of a layer's table printed (an H3 layer can have many cells)
LAYER_ROWS_SHOWN = 10


def _print_layer(console, lx: LayerExplanation) -> None:
    from rich.table import Table

    title = f"layer {lx.name}" + (f" ({lx.spec})" if lx.spec else "")
    table = Table(title=f"{title}: distinct userdays per region")
    for col, just in (("region", "left"), ("code", "left"), ("locations", "right"),
                      ("distinct userdays", "right"), ("share", "right")):
        table.add_column(col, justify=just)
    total = lx.home["total_userdays"] if lx.home else 0.0
    home_code = lx.home["region_code"] if lx.home else None
    rows = lx.per_region.to_pylist()
    for r in rows[:LAYER_ROWS_SHOWN]:
        share = r["userdays"] / total if total else float("nan")
        table.add_row(str(r["region"]), str(r["region_code"]), str(r["locations"]),
                      _fmt_days(r["userdays"]), f"{share:.1%}",
                      style="bold green" if r["region_code"] == home_code else None)
    console.print(table)
    if len(rows) > LAYER_ROWS_SHOWN:
        console.print(f"  … and {len(rows) - LAYER_ROWS_SHOWN} more region(s)")
    if lx.locations_no_region:
        console.print(f"  {lx.locations_no_region} location row(s) in no region of this layer")
    console.print(f"[bold]layer {lx.name}[/bold]: {lx.reason()}")


def draw_map(ex: Explanation, countries, out: str | Path) -> Path:
    """The user's points framed on them, their countries shaded by distinct userdays.

    PNG (or SVG by suffix). The home country is outlined in red.
    """
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
            title += f" — {ex.classification} ({home['status']})"
    per_country = dict(zip(ex.per_country.column("country_code").to_pylist(),
                           ex.per_country.column("userdays").to_pylist(), strict=True))
    label = f"home: {home['country']}" if home else "home country"
    fig = plots.user_map(countries, lon, lat, home["country_code"] if home else None, title,
                         userdays=days, country_userdays=per_country, in_country=ex.in_country,
                         home_label=label)
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
    p.add_argument("--min-share", type=float, default=None,
                   help="home's share below this: undetermined (default: HOMELOC_MIN_SHARE or 0)")
    p.add_argument("--min-margin", type=float, default=None,
                   help="lead over the runner-up below this: undetermined (default: "
                        "HOMELOC_MIN_MARGIN or 0)")
    p.add_argument("--layer", action="append", default=None, metavar="NAME=SPEC",
                   help="a region layer as for homeloc run (repeatable; default: HOMELOC_LAYERS); "
                        "the user's home in each is reported with its status and reason")
    p.add_argument("--study-region", default=None, metavar="LAYER=CODE",
                   help="the nested classes of homeloc run --study-region (default: "
                        "HOMELOC_STUDY_REGION)")


def cmd_explain(args) -> int:
    """Run ``homeloc explain``; 0 = explained, 2 = unknown user or bad arguments."""
    from rich.console import Console

    from homeloc_assets.geo import CountryError
    from homeloc_assets.inference.rules import HomeRule
    from homeloc_assets.inputs import InputError, find_user
    from homeloc_assets.settings import Settings

    err = Console(stderr=True, soft_wrap=True)
    path = Path(args.input)
    if not path.is_file():
        err.print(f"homeloc: error: input file not found: {path}")
        return EXIT_USAGE
    try:
        settings = Settings.from_env().with_(
            study_country=args.study_country, min_userdays=args.min_userdays,
            min_share=args.min_share, min_margin=args.min_margin,
            layers=";".join(args.layer) if args.layer else None,
            study_region=args.study_region)
        found = find_user(path, args.user_guid)
        if found.rows.num_rows == 0 and found.rejects.num_rows == 0:
            err.print(f"homeloc: error: user {args.user_guid!r} is not in {path} "
                      "(user_guid must match exactly; the file must be sorted by user_guid)")
            return EXIT_USAGE
        countries = load_countries(settings)
        rule = HomeRule(min_userdays=settings.min_userdays, min_share=settings.min_share,
                        min_margin=settings.min_margin)
        ex = explain_user(path, args.user_guid, countries, settings.study_country,
                          found=found, rule=rule, layers=settings.layer_specs,
                          study_region=settings.study_region_spec)
    except (ValueError, CountryError, InputError) as exc:
        err.print(f"homeloc: error: {exc}")
        return EXIT_USAGE
    print_explanation(ex, Console(soft_wrap=True))
    if args.out:
        out = draw_map(ex, countries, args.out)
        print(f"map: {out}", file=sys.stdout)
    return EXIT_OK
