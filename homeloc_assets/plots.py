"""Figures for the researcher: the seed notebook's pictures, as plain matplotlib (no Dagster).

Every function returns a :class:`matplotlib.figure.Figure` drawn with the Agg
backend (no display needed). :func:`save_figure` writes a figure as PNG and
SVG atomically; :func:`figure_markdown` makes a small base64 PNG as a Markdown
image for Dagster's ``MetadataValue.md``.

Maps use the Mollweide projection (``ESRI:54009``), as the seed notebook did.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import geopandas as gpd  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import colors as mcolors  # noqa: E402
from matplotlib import ticker as mticker  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from homeloc_assets.atomic import atomic_path  # noqa: E402

MOLLWEIDE = "ESRI:54009"
#: Simplification tolerance (degrees) of country outlines on world maps: drawing speed only.
WORLD_SIMPLIFY_DEG = 0.1

CLASS_ORDER = ("Local", "Tourist", "undetermined")
CLASS_COLORS = {"Local": "#1f77b4", "Tourist": "#ff7f0e", "undetermined": "#9e9e9e",
                "Domestic tourist": "#ffbb78", "International tourist": "#ff7f0e"}
NO_DATA_COLOR = "#eeeeee"
EDGE_COLOR = "#9a9a9a"
HIGHLIGHT_COLOR = "#d62728"


def _figure(width: float, height: float) -> Figure:
    # Figure() directly (not pyplot): no global state, safe in threads and long-lived processes.
    return Figure(figsize=(width, height), layout="constrained")


# ----------------------------------------------------------------- bar chart
def classification_bar(
    counts: Mapping[str, int], study_country: str = "", title: str | None = None
) -> Figure:
    """Bar chart of users per class (Local / Tourist / undetermined), counts written on the bars.

    The seed notebook's ``countplot`` of Locals vs Tourists; classes with no
    user are still drawn (height 0) so charts of different runs line up.
    """
    nested = [k for k in ("Domestic tourist", "International tourist") if k in counts]
    order = ["Local", *nested, "undetermined"] if nested else list(CLASS_ORDER)
    labels = order + sorted(k for k in counts if k not in order and k != "Tourist")
    values = [int(counts.get(k, 0)) for k in labels]
    total = sum(values)
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    bars = ax.bar(labels, values, color=[CLASS_COLORS.get(k, "#777777") for k in labels])
    for bar, v in zip(bars, values, strict=True):
        share = f" ({v / total:.1%})" if total else ""
        ax.annotate(
            f"{v:,}{share}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            xytext=(0, 3),
            textcoords="offset points",
        )
    ax.set_ylabel("users")
    ax.set_ylim(0, max(values + [1]) * 1.15)
    ax.spines[["top", "right"]].set_visible(False)
    where = f" of {study_country}" if study_country else ""
    ax.set_title(title or f"Locals{where} and Tourists — {total:,} users with a home")
    return fig


# --------------------------------------------------------------------- maps
_OUTLINES_CACHE: dict = {}


def world_outlines(countries: gpd.GeoDataFrame, tolerance: float = WORLD_SIMPLIFY_DEG) -> gpd.GeoDataFrame:
    """``countries`` simplified (for drawing) and projected to Mollweide.

    Cached per process for the same countries and tolerance (about 2 s each time
    for Natural Earth 1:10m otherwise).
    """
    key = (tolerance, tuple(countries["country_code"]), tuple(countries.total_bounds))
    if key not in _OUTLINES_CACHE:
        _OUTLINES_CACHE.clear()
        _OUTLINES_CACHE[key] = _world_outlines(countries, tolerance)
    return _OUTLINES_CACHE[key].copy()


def _world_outlines(countries: gpd.GeoDataFrame, tolerance: float) -> gpd.GeoDataFrame:
    out = countries[["country", "country_code", "geometry"]].copy()
    if tolerance > 0:
        out["geometry"] = out.geometry.simplify(tolerance, preserve_topology=True)
    out = out[~out.geometry.is_empty & out.geometry.notna()]
    return out.to_crs(MOLLWEIDE)


def _map_axes(fig: Figure):
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_aspect("equal")
    return ax


def choropleth(
    countries: gpd.GeoDataFrame,
    values: Mapping[str, float] | pd.Series,
    title: str,
    label: str,
    *,
    log: bool = False,
    cmap: str = "viridis",
    highlight: str | None = None,
    highlight_label: str | None = None,
    highlight_fill: str | None = None,
    outlines: gpd.GeoDataFrame | None = None,
) -> Figure:
    """World map (Mollweide) coloured by ``values`` keyed by ``country_code``.

    Countries without a value are light grey. ``highlight`` (a country code) is
    outlined in red (and filled with ``highlight_fill`` if given) and, with
    ``highlight_label``, named in the legend. Pass
    ``outlines`` (from :func:`world_outlines`) to reuse a projected world.
    """
    world = outlines if outlines is not None else world_outlines(countries)
    vals = pd.Series(values, dtype="float64")
    world = world.assign(value=world["country_code"].map(vals))
    fig = _figure(10.0, 5.6)
    ax = _map_axes(fig)
    world.plot(ax=ax, color=NO_DATA_COLOR, edgecolor=EDGE_COLOR, linewidth=0.2)
    have = world[world["value"].notna() & (world["value"] > (0 if log else -np.inf))]
    if len(have):
        vmin, vmax = float(have["value"].min()), float(have["value"].max())
        if log:
            norm = mcolors.LogNorm(vmin=vmin, vmax=max(vmax, vmin * 10))
        else:
            norm = mcolors.Normalize(vmin=min(vmin, 0.0), vmax=vmax if vmax > vmin else vmin + 1)
        have.plot(
            ax=ax, column="value", cmap=cmap, norm=norm, edgecolor=EDGE_COLOR, linewidth=0.2
        )
        sm = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
        cbar = fig.colorbar(sm, ax=ax, orientation="horizontal", shrink=0.5, pad=0.02, label=label)
        if log:  # 1, 2, 5, 10, 20, 50 ... written out, not only the powers of ten
            cbar.ax.xaxis.set_major_locator(mticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            cbar.ax.xaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:,.4g}"))
            cbar.ax.xaxis.set_minor_formatter(mticker.NullFormatter())
    if highlight is not None:
        hl = world[world["country_code"] == highlight]
        if len(hl):
            hl.plot(ax=ax, facecolor=highlight_fill or "none", edgecolor=HIGHLIGHT_COLOR,
                    linewidth=1.2)
            if highlight_label:
                from matplotlib.patches import Patch

                ax.legend(
                    handles=[Patch(facecolor=highlight_fill or "none", edgecolor=HIGHLIGHT_COLOR,
                                   lw=1.2, label=highlight_label)],
                    loc="lower left",
                    frameon=False,
                )
    _world_frame(ax)
    ax.set_title(title)
    return fig


def _world_frame(ax) -> None:
    """The Mollweide ellipse as the map's border, and the whole world in view."""
    r = 18_040_095.7  # Mollweide x half-width (2*sqrt(2)*R) for R = 6378137 m
    t = np.linspace(0, 2 * np.pi, 361)
    ax.plot(r * np.cos(t), r / 2 * np.sin(t), color="#bbbbbb", lw=0.6)
    ax.set_xlim(-r * 1.01, r * 1.01)
    ax.set_ylim(-r / 2 * 1.02, r / 2 * 1.02)


def user_map(
    countries: gpd.GeoDataFrame,
    lon: np.ndarray,
    lat: np.ndarray,
    home_code: str | None = None,
    title: str = "",
    *,
    userdays: np.ndarray | None = None,
    in_home: np.ndarray | None = None,
    home_label: str = "home country",
    pad: float = 0.25,
    min_span_m: float = 400_000.0,
) -> Figure:
    """One user's points (Mollweide), zoomed to their extent, home country filled.

    Point size follows ``userdays`` (distinct days at the location) when given;
    points where ``in_home`` is true are red, the others blue.
    The view covers all points plus ``pad`` of their span on each side, and at
    least ``min_span_m`` metres, so a single point still shows its surroundings.
    """
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    pts = gpd.GeoSeries(gpd.points_from_xy(lon, lat), crs="EPSG:4326").to_crs(MOLLWEIDE)
    x, y = pts.x.to_numpy(), pts.y.to_numpy()
    fig = _figure(8.0, 6.0)
    ax = _map_axes(fig)
    if len(x):
        x0, x1, y0, y1 = x.min(), x.max(), y.min(), y.max()
        span = max(x1 - x0, y1 - y0, min_span_m)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        half = span * (0.5 + pad)
        xlim, ylim = (cx - half * 4 / 3, cx + half * 4 / 3), (cy - half, cy + half)
    else:
        r = 18_040_095.7
        xlim, ylim = (-r, r), (-r / 2, r / 2)
    # Simplify in proportion to the view: fine detail when zoomed in.
    tol = float(np.clip((xlim[1] - xlim[0]) / 111_000 / 2000, 0.001, WORLD_SIMPLIFY_DEG))
    world = world_outlines(countries, tol)
    world.plot(ax=ax, color=NO_DATA_COLOR, edgecolor=EDGE_COLOR, linewidth=0.4)
    if home_code is not None:
        home = world[world["country_code"] == home_code]
        if len(home):
            home.plot(ax=ax, color="#fbd3b0", edgecolor=HIGHLIGHT_COLOR, linewidth=1.0)
    if len(x):
        if userdays is not None:
            ud = np.asarray(userdays, dtype=np.float64)
            sizes = 20 + 80 * np.sqrt(np.maximum(ud, 0) / max(float(np.max(ud)), 1.0))
        else:
            sizes = np.full(len(x), 30.0)
        mask = np.zeros(len(x), bool) if in_home is None else np.asarray(in_home, bool)
        for sel, color, label in ((~mask, "#1f77b4", "elsewhere"), (mask, HIGHLIGHT_COLOR,
                                                                     home_label)):
            if sel.any():
                ax.scatter(x[sel], y[sel], s=sizes[sel], c=color, edgecolors="white",
                           linewidths=0.6, zorder=3, alpha=0.85,
                           label=f"{label} ({int(sel.sum())} location(s))")
        ax.legend(loc="lower left", fontsize=8, framealpha=0.8)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_title(title)
    return fig


# ------------------------------------------------------------------- output
def save_figure(fig: Figure, out_dir: str | Path, name: str, dpi: int = 150) -> dict[str, Path]:
    """Write ``fig`` as ``<out_dir>/<name>.png`` and ``.svg``, each atomically.

    The same figure gives the same bytes (no date in the files, SVG ids salted
    by ``name``), so a rerun's published set has the same manifest.
    """
    import matplotlib

    out_dir = Path(out_dir)
    paths = {}
    for fmt in ("png", "svg"):
        target = out_dir / f"{name}.{fmt}"
        meta = {"Date": None} if fmt == "svg" else {"Software": None}
        with atomic_path(target) as tmp, matplotlib.rc_context({"svg.hashsalt": name}):
            fig.savefig(tmp, format=fmt, dpi=dpi, metadata=meta)
        paths[fmt] = target
    return paths


def png_bytes(fig: Figure, dpi: int = 60) -> bytes:
    """``fig`` as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def figure_markdown(fig: Figure, alt: str = "figure", dpi: int = 50) -> str:
    """A Markdown image with ``fig`` as a small inline (base64) PNG."""
    data = base64.b64encode(png_bytes(fig, dpi)).decode("ascii")
    return f"![{alt}](data:image/png;base64,{data})"


LANDSCAPE_COLORS = {"touristic": "#d62728", "local": "#1f77b4", "not different": "#bdbdbd",
                    "too little data": "#f2f2f2"}


def landscape_map(cells: gpd.GeoDataFrame, countries: gpd.GeoDataFrame, code: str,
                  column: str, title: str) -> Figure:
    """The study country (outline) with its H3 cells by ``category`` or ``tourist_share``.

    The share is drawn on a diverging scale centred on the dataset-wide share
    (``overall_share``); cells without classified userdays are left light grey.
    """
    fig = _figure(8, 8)
    ax = fig.add_subplot()
    region = countries[countries["country_code"] == code]
    region.plot(ax=ax, color="white", edgecolor="#555555", linewidth=0.6)
    if column == "category":
        for cat, color in LANDSCAPE_COLORS.items():
            sel = cells[cells["category"] == cat]
            if len(sel):
                sel.plot(ax=ax, color=color, linewidth=0)
            ax.plot([], [], "s", color=color, label=f"{cat} ({len(sel):,})")
        ax.legend(loc="lower left", fontsize=8, frameon=True)
    else:
        overall = float(cells["overall_share"].iloc[0]) if len(cells) else 0.5
        vc = min(max(overall, 1e-6), 1 - 1e-6)
        norm = mcolors.TwoSlopeNorm(vmin=0.0, vcenter=vc, vmax=1.0)
        known = cells[cells[column].notna()]
        cells[cells[column].isna()].plot(ax=ax, color=NO_DATA_COLOR, linewidth=0)
        if len(known):
            known.plot(ax=ax, column=column, cmap="RdBu_r", norm=norm, linewidth=0,
                       legend=True, legend_kwds={"label": f"tourist share (centre: overall "
                                                          f"{overall:.1%})", "shrink": 0.6})
    minx, miny, maxx, maxy = region.total_bounds if len(region) else cells.total_bounds
    ax.set_xlim(minx, maxx)
    ax.set_ylim(miny, maxy)
    ax.set_aspect(1 / max(np.cos(np.radians((miny + maxy) / 2)), 0.1))
    ax.set_title(title)
    ax.set_axis_off()
    return fig
