"""Figures for the researcher: the seed notebook's pictures, as plain matplotlib (no Dagster).

Every function returns a :class:`matplotlib.figure.Figure` drawn with the Agg
backend (no display needed), with text sizes readable at the size the UI shows
them (:data:`FONT_SIZES`). :func:`save_figure` writes a figure as PNG and SVG
atomically; :func:`png_bytes` and :func:`figure_markdown` make the copies for
Dagster's metadata.

World maps use the Mollweide projection (``ESRI:54009``), as the seed notebook
did; regional views (the study country and its neighbours, one user's points,
a layer's regions) a Lambert azimuthal equal-area projection centred on what
they show. Log colour bars get 1-2-5 ticks thinned so labels never touch,
written out (``10,000``, ``0.005``).
"""

from __future__ import annotations

import base64
import io
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")

import geopandas as gpd  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import colors as mcolors  # noqa: E402
from matplotlib import ticker as mticker  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.figure import Figure

from homeloc_assets.atomic import atomic_path  # noqa: E402

# an empty layer (no tourists from anywhere, say) draws nothing, as it should: no warning line
warnings.filterwarnings("ignore", message="The GeoSeries you are attempting to plot is empty")

MOLLWEIDE = "ESRI:54009"
#: Simplification tolerance (degrees) of country outlines on world maps: drawing speed only.
WORLD_SIMPLIFY_DEG = 0.1

CLASS_ORDER = ("Local", "Tourist", "undetermined")
CLASS_COLORS = {"Local": "#1f77b4", "Tourist": "#ff7f0e", "undetermined": "#9e9e9e",
                "Domestic tourist": "#ffbb78", "International tourist": "#ff7f0e"}
NO_DATA_COLOR = "#eeeeee"
EDGE_COLOR = "#9a9a9a"
HIGHLIGHT_COLOR = "#d62728"
HOME_OUTLINE = "#000000"


def _figure(width: float, height: float) -> Figure:
    # Figure() directly (not pyplot): no global state, safe in threads and long-lived processes.
    # Imported here: matplotlib.figure costs about 0.3 s, and a run whose figures all come
    # from the figure cache draws none.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


#: Text sizes (points) of every figure here: readable at the size the UI shows them.
FONT_SIZES = {"font.size": 12, "axes.titlesize": 14, "axes.labelsize": 12,
              "xtick.labelsize": 11, "ytick.labelsize": 11, "legend.fontsize": 11}


def readable(func):
    """Draw ``func``'s figure with :data:`FONT_SIZES` (fonts are fixed when artists are made)."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(FONT_SIZES):
            return func(*args, **kwargs)

    return wrapper


# ----------------------------------------------------------------- bar chart
@readable
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
    fig = _figure(9.0, 5.0)
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
_MAP_CACHE: dict = {}
_MAP_CACHE_SIZE = 8


def _cached(key: tuple, make):
    """``make()``, kept per process for ``key`` (a few maps: the outlines figures share)."""
    if key not in _MAP_CACHE:
        if len(_MAP_CACHE) >= _MAP_CACHE_SIZE:
            _MAP_CACHE.pop(next(iter(_MAP_CACHE)))
        _MAP_CACHE[key] = make()
    return _MAP_CACHE[key].copy()


def _countries_key(countries: gpd.GeoDataFrame) -> tuple:
    return (tuple(countries["country_code"]), tuple(countries.total_bounds), len(countries))


def world_outlines(countries: gpd.GeoDataFrame, tolerance: float = WORLD_SIMPLIFY_DEG) -> gpd.GeoDataFrame:
    """``countries`` simplified (for drawing) and projected to Mollweide.

    Cached per process for the same countries and tolerance (about 1–2 s each
    time for Natural Earth 1:10m otherwise).
    """
    return _cached(("world", tolerance, *_countries_key(countries)),
                   lambda: _world_outlines(countries, tolerance))


def _world_outlines(countries: gpd.GeoDataFrame, tolerance: float) -> gpd.GeoDataFrame:
    out = countries[["country", "country_code", "geometry"]].copy()
    if tolerance > 0:
        out["geometry"] = out.geometry.simplify(tolerance, preserve_topology=True)
    out = out[~out.geometry.is_empty & out.geometry.notna()]
    return out.to_crs(MOLLWEIDE)


def _polygon_paths(geoms: np.ndarray, group: np.ndarray) -> list:
    """One compound matplotlib Path per run of equal ``group`` ids (``geoms`` sorted by them).

    Each ring becomes MOVETO, LINETO…, CLOSEPOLY (holes included), oriented as
    ``GeoDataFrame.plot`` draws them; the coordinates come from shapely in one call
    and are cut by index, so there is no Python per polygon.
    """
    import shapely
    from matplotlib.path import Path as MplPath

    # exteriors clockwise, holes counter-clockwise: matplotlib fills by the nonzero
    # winding rule, so a hole turning the exterior's way would be painted over
    geoms = shapely.orient_polygons(geoms, exterior_cw=True)
    parts, part_of = shapely.get_parts(geoms, return_index=True)
    rings, ring_part = shapely.get_rings(parts, return_index=True)
    coords, ring_of = shapely.get_coordinates(rings, return_index=True)
    if not len(coords):
        return []
    codes = np.full(len(coords), MplPath.LINETO, dtype=np.uint8)
    starts = np.r_[0, np.flatnonzero(np.diff(ring_of)) + 1]
    codes[starts] = MplPath.MOVETO
    codes[np.r_[starts[1:], len(coords)] - 1] = MplPath.CLOSEPOLY
    owner = np.asarray(group)[part_of[ring_part][ring_of]]  # group of each vertex
    cut = np.flatnonzero(np.diff(owner)) + 1
    return [MplPath(v, c) for v, c in zip(np.split(coords, cut), np.split(codes, cut),
                                          strict=True)]


def draw_polygons(ax, geometry, facecolor="none", edgecolor="none", linewidth: float = 0.0,
                  gid: str | None = None):
    """Draw (multi)polygons as one PathCollection, one Path per geometry, built vectorised.

    The picture ``GeoDataFrame.plot`` draws, without its per-polygon Python (about
    half of a world choropleth's drawing time). ``facecolor`` is one colour or
    one per geometry; empty geometries are skipped.
    """
    import shapely
    from matplotlib.collections import PathCollection

    geoms = np.asarray(getattr(geometry, "array", geometry), dtype=object)
    keep = ~(shapely.is_missing(geoms) | shapely.is_empty(geoms))
    faces = facecolor
    if not isinstance(facecolor, str) and np.ndim(facecolor) == 2:
        faces = np.asarray(facecolor)[keep]
    geoms = geoms[keep]
    if not len(geoms):
        return None
    coll = PathCollection(_polygon_paths(geoms, np.arange(len(geoms))), facecolors=faces,
                          edgecolors=edgecolor, linewidths=linewidth)
    if gid is not None:
        coll.set_gid(gid)
    ax.add_collection(coll, autolim=True)
    ax.autoscale_view()
    return coll

def _colours(values: pd.Series, cmap, norm) -> np.ndarray:
    """RGBA of ``values`` on ``cmap`` (a name or a colormap) under ``norm``."""
    cm = matplotlib.colormaps[cmap] if isinstance(cmap, str) else cmap
    return cm(norm(values.to_numpy(dtype=float)))


def _map_axes(fig: Figure, spec=None):
    ax = fig.add_subplot() if spec is None else fig.add_subplot(spec)
    ax.set_axis_off()
    ax.set_aspect("equal")
    return ax


def format_number(v: float) -> str:
    """A colour-bar label: ``5,000``, ``10,000``, ``0.005``, ``0.01``, ``2.5`` (never ``1e+04``)."""
    v = float(v)
    if v == 0 or not np.isfinite(v):
        return f"{v:g}"
    if abs(v) >= 1:
        return f"{v:,.0f}" if v == round(v) else f"{v:,.3g}"
    decimals = int(-np.floor(np.log10(abs(v)))) + 1
    return f"{v:.{decimals}f}".rstrip("0").rstrip(".")


def log_ticks(vmin: float, vmax: float, max_ticks: int = 6) -> list[float]:
    """1-2-5 ticks between ``vmin`` and ``vmax`` (log scale), thinned to at most ``max_ticks``.

    Falls back to powers of ten only, then every other power, so labels never crowd;
    a range inside one step gets its two ends.
    """
    lo, hi = np.floor(np.log10(vmin)) - 1, np.ceil(np.log10(vmax)) + 1
    decades = 10.0 ** np.arange(lo, hi + 1)
    eps = 1e-9
    for subs, every in (((1, 2, 5), 1), ((1, 3), 1), ((1,), 1), ((1,), 2), ((1,), 3), ((1,), 5)):
        ticks = [d * m for i, d in enumerate(decades) if i % every == 0 for m in subs]
        ticks = [t for t in ticks if vmin * (1 - eps) <= t <= vmax * (1 + eps)]
        if 2 <= len(ticks) <= max_ticks:
            return [float(t) for t in ticks]
        if len(ticks) < 2:
            break
    return [float(vmin), float(vmax)]


def _colorbar(fig: Figure, norm, cmap: str, label: str, axes, log: bool):
    sm = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
    cbar = fig.colorbar(sm, ax=axes, orientation="horizontal", shrink=0.55, pad=0.03,
                        aspect=40, label=label)
    if log:
        cbar.set_ticks(log_ticks(norm.vmin, norm.vmax))
        cbar.ax.xaxis.set_minor_locator(mticker.NullLocator())
    else:
        cbar.ax.xaxis.set_major_locator(mticker.MaxNLocator(5))
    cbar.ax.xaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: format_number(v)))
    return cbar


def _laea(lon: float, lat: float) -> str:
    """Lambert azimuthal equal-area centred on ``(lon, lat)``: true shapes around the centre."""
    return f"+proj=laea +lat_0={lat:.4f} +lon_0={lon:.4f} +datum=WGS84 +units=m +no_defs"


def _largest_part(geom):
    parts = getattr(geom, "geoms", [geom])
    return max(parts, key=lambda g: g.area * max(np.cos(np.radians(g.centroid.y)), 0.05))


def _fit_aspect(x0: float, x1: float, y0: float, y1: float, aspect: float):
    """Grow the shorter side of the box so that width / height == ``aspect`` (centred)."""
    w, h = x1 - x0, y1 - y0
    if w / h < aspect:
        grow = (h * aspect - w) / 2
        x0, x1 = x0 - grow, x1 + grow
    else:
        grow = (w / aspect - h) / 2
        y0, y1 = y0 - grow, y1 + grow
    return (x0, x1), (y0, y1)


def _local_map(countries: gpd.GeoDataFrame, crs: str, xlim, ylim) -> gpd.GeoDataFrame:
    """The countries inside a projected frame, clipped in lon/lat first (LAEA explodes far away).

    Cached per process: the study-region panels of one run share a frame.
    """
    return _cached(("local", crs, tuple(xlim), tuple(ylim), *_countries_key(countries)),
                   lambda: _make_local_map(countries, crs, xlim, ylim))


def _make_local_map(countries: gpd.GeoDataFrame, crs: str, xlim, ylim) -> gpd.GeoDataFrame:
    from shapely.geometry import box

    frame = gpd.GeoSeries([box(xlim[0], ylim[0], xlim[1], ylim[1])], crs=crs)
    edge = frame.segmentize(max(xlim[1] - xlim[0], ylim[1] - ylim[0]) / 50).to_crs("EPSG:4326")
    minx, miny, maxx, maxy = edge.total_bounds
    # simplify in proportion to the view (metres across / ~111 km per degree)
    tol = float(np.clip(max(xlim[1] - xlim[0], ylim[1] - ylim[0]) / 111_000 / 1500, 0.002,
                        WORLD_SIMPLIFY_DEG))
    minx, maxx = max(minx - 5, -180), min(maxx + 5, 180)
    miny, maxy = max(miny - 5, -89.9), min(maxy + 5, 89.9)
    out = countries[["country", "country_code", "geometry"]]
    out = out[out.intersects(box(minx, miny, maxx, maxy))].copy()
    out["geometry"] = out.geometry.clip_by_rect(minx, miny, maxx, maxy)
    out = out[~out.geometry.is_empty]
    out["geometry"] = out.geometry.simplify(tol, preserve_topology=True)
    return out.to_crs(crs)


def region_frame(countries: gpd.GeoDataFrame, code: str, aspect: float = 1.0,
                 max_reach: float = 1.5):
    """``(crs, xlim, ylim, neighbours)``: a frame on the study country and its neighbours.

    Neighbours are the countries touching the study country's main part (its
    largest polygon, with its parts less than 2 degrees away; overseas parts
    are left out); only their polygons that
    touch it set the frame, and the frame reaches at most ``max_reach`` times
    the main part's size beyond it (so Russia does not swallow Finland's view).
    """
    geoms = countries.set_index("country_code").geometry
    main = _largest_part(geoms[code])
    c = main.centroid
    crs = _laea(c.x, c.y)
    near = main.buffer(0.05)
    home = geoms[code]
    parts = [main] + [g for g in getattr(home, "geoms", [home])
                      if g is not main and g.distance(main) < 2.0]  # islands nearby, not overseas
    neighbours = []
    for other, geom in geoms.items():
        if other == code or not geom.intersects(near):
            continue
        neighbours.append(other)
        parts += [g for g in getattr(geom, "geoms", [geom]) if g.intersects(near)]
    proj = gpd.GeoSeries(parts, crs="EPSG:4326").to_crs(crs)
    mx0, my0, mx1, my1 = proj.iloc[0].bounds
    reach = max_reach * max(mx1 - mx0, my1 - my0)
    x0, y0, x1, y1 = proj.total_bounds
    x0, x1 = max(x0, mx0 - reach), min(x1, mx1 + reach)
    y0, y1 = max(y0, my0 - reach), min(y1, my1 + reach)
    pad = (0.04 if neighbours else 0.25) * max(x1 - x0, y1 - y0)  # an island: its surroundings
    xlim, ylim = _fit_aspect(x0 - pad, x1 + pad, y0 - pad, y1 + pad, aspect)
    return crs, xlim, ylim, neighbours


@readable
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
    study_region: bool = True,
    value_format=format_number,
) -> Figure:
    """World map (Mollweide) coloured by ``values`` keyed by ``country_code``, and a study-region view.

    Countries without a value are light grey. ``highlight`` (a country code) is
    outlined in red (and filled with ``highlight_fill`` if given) and, with
    ``highlight_label``, named in the legend. With ``study_region`` (and a
    ``highlight``), a second panel beside the world shows the highlighted
    country and its neighbours framed on them (:func:`region_frame`, equal-area
    projection centred on the country), same colours, each country there
    labelled with its value. Pass ``outlines`` (from :func:`world_outlines`)
    to reuse a projected world.
    """
    world = outlines if outlines is not None else world_outlines(countries)
    vals = pd.Series(values, dtype="float64")
    world = world.assign(value=world["country_code"].map(vals))
    with_region = bool(study_region and highlight is not None
                       and (countries["country_code"] == highlight).any())
    if with_region:
        fig = _figure(12.0, 5.4)
        grid = fig.add_gridspec(1, 2, width_ratios=[2.0, 1.0])
        ax = _map_axes(fig, grid[0, 0])
        rax = _map_axes(fig, grid[0, 1])
        axes = [ax, rax]
    else:
        fig = _figure(11.0, 6.2)
        ax = _map_axes(fig)
        rax, axes = None, [ax]
    draw_polygons(ax, world.geometry, NO_DATA_COLOR, EDGE_COLOR, 0.2)
    have = world[world["value"].notna() & (world["value"] > (0 if log else -np.inf))]
    norm = None
    if len(have):
        vmin, vmax = float(have["value"].min()), float(have["value"].max())
        if log:
            norm = mcolors.LogNorm(vmin=vmin, vmax=max(vmax, vmin * 10))
        else:
            norm = mcolors.Normalize(vmin=min(vmin, 0.0), vmax=vmax if vmax > vmin else vmin + 1)
        draw_polygons(ax, have.geometry, _colours(have["value"], cmap, norm), EDGE_COLOR, 0.2)
        _colorbar(fig, norm, cmap, label, axes, log)
    if highlight is not None:
        hl = world[world["country_code"] == highlight]
        if len(hl):
            draw_polygons(ax, hl.geometry, highlight_fill or "none", HIGHLIGHT_COLOR, 1.2)
            if highlight_label:
                from matplotlib.patches import Patch

                ax.legend(
                    handles=[Patch(facecolor=highlight_fill or "none", edgecolor=HIGHLIGHT_COLOR,
                                   lw=1.2, label=highlight_label)],
                    loc="lower left",
                    frameon=False,
                )
    _world_frame(ax)
    if rax is not None:
        _region_panel(rax, countries, vals, highlight, norm, cmap, highlight_fill, log,
                      value_format)
        fig.suptitle(title, fontsize=FONT_SIZES["axes.titlesize"] + 1)
        ax.set_title("world (Mollweide)")
    else:
        ax.set_title(title)
    return fig


def _region_panel(ax, countries, vals, code, norm, cmap, fill, log, value_format) -> None:
    """The study country and its neighbours, labelled with their values."""
    crs, xlim, ylim, neighbours = region_frame(countries, code, aspect=1.0)
    local = _local_map(countries, crs, xlim, ylim)
    local = local.assign(value=local["country_code"].map(vals))
    draw_polygons(ax, local.geometry, NO_DATA_COLOR, EDGE_COLOR, 0.5)
    have = local[local["value"].notna() & (local["value"] > (0 if log else -np.inf))]
    if norm is not None and len(have):
        draw_polygons(ax, have.geometry, _colours(have["value"], cmap, norm), EDGE_COLOR, 0.5)
    study = local[local["country_code"] == code]
    draw_polygons(ax, study.geometry, fill or "none", HIGHLIGHT_COLOR, 1.6)
    from shapely.geometry import box

    view = box(xlim[0], ylim[0], xlim[1], ylim[1])
    shown = local[local["country_code"].isin([code, *neighbours])]
    for row in shown.itertuples():
        part = row.geometry.intersection(view)
        if part.is_empty:
            continue
        pt = _largest_part(part).representative_point()
        value = vals.get(row.country_code)
        text = row.country_code if value is None or pd.isna(value) else \
            f"{row.country_code}\n{value_format(value)}"
        ax.annotate(text, (pt.x, pt.y), ha="center", va="center", fontsize=10,
                    color="#222222", bbox={"boxstyle": "round,pad=0.15", "fc": "white",
                                           "ec": "none", "alpha": 0.75})
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    name = study["country"].iloc[0] if len(study) else code
    ax.set_title(f"{name} and its neighbours")


def _world_frame(ax) -> None:
    """The Mollweide ellipse as the map's border, and the whole world in view."""
    r = 18_040_095.7  # Mollweide x half-width (2*sqrt(2)*R) for R = 6378137 m
    t = np.linspace(0, 2 * np.pi, 361)
    ax.plot(r * np.cos(t), r / 2 * np.sin(t), color="#bbbbbb", lw=0.6)
    ax.set_xlim(-r * 1.01, r * 1.01)
    ax.set_ylim(-r / 2 * 1.02, r / 2 * 1.02)


#: a user whose points spread wider than this (degrees of longitude or latitude) gets the world
USER_MAP_WORLD_SPAN_DEG = 120.0


def user_frame(lon: np.ndarray, lat: np.ndarray, aspect: float, *, pad: float = 0.12,
               min_span_m: float = 300_000.0):
    """``(crs, xlim, ylim)`` framing a user's points: their extent plus ``pad`` on each side.

    An equal-area projection centred on the points (Mollweide for the whole
    world when they span more than :data:`USER_MAP_WORLD_SPAN_DEG`); the
    frame is at least ``min_span_m`` across and has the axes' ``aspect``
    (width / height), so nothing is cut off and no side is mostly empty.
    """
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    if len(lon) == 0:
        r = 18_040_095.7
        return MOLLWEIDE, *_fit_aspect(-r, r, -r / 2, r / 2, aspect)
    # the centre of the points' longitudes on the circle (a user on both sides of 180°)
    clon = float(np.degrees(np.arctan2(np.sin(np.radians(lon)).mean(),
                                       np.cos(np.radians(lon)).mean())))
    rel = (lon - clon + 180.0) % 360.0 - 180.0
    if np.ptp(rel) > USER_MAP_WORLD_SPAN_DEG or np.ptp(lat) > USER_MAP_WORLD_SPAN_DEG / 2:
        crs = MOLLWEIDE
    else:
        crs = _laea(clon + float(rel.min() + rel.max()) / 2, float(lat.min() + lat.max()) / 2)
    pts = gpd.GeoSeries(gpd.points_from_xy(lon, lat), crs="EPSG:4326").to_crs(crs)
    x, y = pts.x.to_numpy(), pts.y.to_numpy()
    x0, x1, y0, y1 = x.min(), x.max(), y.min(), y.max()
    w, h = max(x1 - x0, min_span_m), max(y1 - y0, min_span_m)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    box_ = (cx - w / 2 * (1 + 2 * pad), cx + w / 2 * (1 + 2 * pad),
            cy - h / 2 * (1 + 2 * pad), cy + h / 2 * (1 + 2 * pad))
    return crs, *_fit_aspect(*box_, aspect)


@readable
def user_map(
    countries: gpd.GeoDataFrame,
    lon: np.ndarray,
    lat: np.ndarray,
    home_code: str | None = None,
    title: str = "",
    *,
    userdays: np.ndarray | None = None,
    country_userdays: Mapping[str, float] | None = None,
    in_country: np.ndarray | None = None,
    home_label: str = "home country",
) -> Figure:
    """One user's points, framed on them (:func:`user_frame`), their countries shaded.

    ``country_userdays`` (country code -> distinct userdays of the user there)
    colours each of the user's countries on a ``Reds`` scale, as the seed
    notebook's per-user choropleth does; the home country is outlined in black.
    Point size follows ``userdays`` (distinct days at the location) when
    given; points where ``in_country`` is false (in no country) are hollow.
    The colour of each shaded country is kept in ``fig.homeloc_country_colours``.
    """
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    fig = _figure(10.0, 7.5)
    ax = _map_axes(fig)
    crs, xlim, ylim = user_frame(lon, lat, 10.0 / 5.6)
    world = world_outlines(countries) if crs == MOLLWEIDE else _local_map(countries, crs, xlim, ylim)
    draw_polygons(ax, world.geometry, NO_DATA_COLOR, EDGE_COLOR, 0.5)
    fig.homeloc_country_colours = {}
    ud = pd.Series(dict(country_userdays or {}), dtype="float64")
    ud = ud[ud > 0]
    if len(ud):
        vmax = float(ud.max())
        norm = mcolors.Normalize(vmin=0.0, vmax=vmax)
        cmap = matplotlib.colormaps["Reds"]
        mine = world[world["country_code"].isin(ud.index)].copy()
        colours = [cmap(0.15 + 0.85 * norm(ud[c])) for c in mine["country_code"]]
        if len(mine):
            draw_polygons(ax, mine.geometry, np.asarray(colours), EDGE_COLOR, 0.6,
                          gid="user-countries")
        fig.homeloc_country_colours = dict(zip(mine["country_code"], colours, strict=True))
        sm = matplotlib.cm.ScalarMappable(
            norm=mcolors.Normalize(vmin=-0.15 / 0.85 * vmax, vmax=vmax), cmap=cmap)
        cbar = fig.colorbar(sm, ax=ax, orientation="horizontal", shrink=0.6, pad=0.02,
                            aspect=40, label="distinct userdays of this user in the country")
        cbar.ax.set_xlim(0, vmax)
        cbar.ax.xaxis.set_major_locator(mticker.MaxNLocator(6, integer=True))
        cbar.ax.xaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: format_number(v)))
    if home_code is not None:
        home = world[world["country_code"] == home_code]
        if len(home):
            draw_polygons(ax, home.geometry, "none", HOME_OUTLINE, 2.0)
    if len(lon):
        pts = gpd.GeoSeries(gpd.points_from_xy(lon, lat), crs="EPSG:4326").to_crs(crs)
        x, y = pts.x.to_numpy(), pts.y.to_numpy()
        if userdays is not None:
            days = np.asarray(userdays, dtype=np.float64)
            sizes = 25 + 120 * np.sqrt(np.maximum(days, 0) / max(float(np.max(days)), 1.0))
        else:
            sizes = np.full(len(x), 40.0)
        inside = np.ones(len(x), bool) if in_country is None else np.asarray(in_country, bool)
        if inside.any():
            ax.scatter(x[inside], y[inside], s=sizes[inside], c="#08306b", edgecolors="white",
                       linewidths=0.8, zorder=3, alpha=0.85,
                       label=f"locations ({int(inside.sum())}; size: distinct days there)")
        if (~inside).any():
            ax.scatter(x[~inside], y[~inside], s=sizes[~inside], facecolors="none",
                       edgecolors="#08306b", linewidths=1.2, zorder=3,
                       label=f"in no country ({int((~inside).sum())})")
        from matplotlib.lines import Line2D

        handles, _ = ax.get_legend_handles_labels()
        if home_code is not None:
            handles.append(Line2D([], [], color=HOME_OUTLINE, lw=2.0, label=home_label))
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles),
                   frameon=False)  # outside the map: it never hides a point
    ax.set_title(title)
    # Frame on the box the layout gives the map (title, legend and colour bar placed), so
    # that equal scales fill it: nothing framed is cut off and no band stays empty.
    ax.set_aspect("auto")
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    fig.draw_without_rendering()
    pos = ax.get_position()
    w_in, h_in = fig.get_size_inches()
    xlim, ylim = _fit_aspect(*xlim, *ylim, (pos.width * w_in) / (pos.height * h_in))
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal", adjustable="box")
    fig.set_layout_engine("none")  # keep that box: a second layout pass would move it
    return fig


@readable
def region_layer_map(
    countries: gpd.GeoDataFrame,
    regions: gpd.GeoDataFrame,
    values: Mapping[str, float] | pd.Series,
    study_code: str,
    title: str,
    label: str,
    *,
    highlight: str | None = None,
    highlight_label: str | None = None,
    cmap: str = "viridis",
) -> Figure:
    """Regions of a layer (``region_code``, ``geometry`` in EPSG:4326) coloured by ``values``.

    Framed on the study country's main part (equal-area projection centred on
    it), log colour scale; regions without a value are not filled. The study
    country is outlined in black, ``highlight`` (a region code, e.g. the study
    region) in red and, with ``highlight_label``, named in the legend.
    """
    fig = _figure(9.0, 8.0)
    ax = _map_axes(fig)
    geoms = countries.set_index("country_code").geometry
    main = _largest_part(geoms[study_code])
    c = main.centroid
    crs = _laea(c.x, c.y)
    mx0, my0, mx1, my1 = gpd.GeoSeries([main], crs="EPSG:4326").to_crs(crs).total_bounds
    pad = 0.06 * max(mx1 - mx0, my1 - my0)
    xlim, ylim = _fit_aspect(mx0 - pad, mx1 + pad, my0 - pad, my1 + pad, 1.0)
    base = _local_map(countries, crs, xlim, ylim)
    draw_polygons(ax, base.geometry, NO_DATA_COLOR, EDGE_COLOR, 0.5)
    vals = pd.Series(values, dtype="float64")
    reg = regions.assign(value=regions["region_code"].astype(str).map(vals))
    reg = reg[reg["value"].notna() & (reg["value"] > 0)]
    if len(reg):
        reg = reg.to_crs(crs)
        vmin, vmax = float(reg["value"].min()), float(reg["value"].max())
        norm = mcolors.LogNorm(vmin=vmin, vmax=max(vmax, vmin * 10))
        draw_polygons(ax, reg.geometry, _colours(reg["value"], cmap, norm), "white", 0.2)
        _colorbar(fig, norm, cmap, label, [ax], True)
    study = base[base["country_code"] == study_code]
    draw_polygons(ax, study.geometry, "none", HOME_OUTLINE, 1.2)
    if highlight is not None:
        hl = regions[regions["region_code"].astype(str) == str(highlight)]
        if len(hl):
            draw_polygons(ax, hl.to_crs(crs).geometry, "none", HIGHLIGHT_COLOR, 1.8)
            if highlight_label:
                from matplotlib.lines import Line2D

                ax.legend(handles=[Line2D([], [], color=HIGHLIGHT_COLOR, lw=1.8,
                                          label=highlight_label)], loc="lower left",
                          framealpha=0.85)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_title(title)
    return fig


def h3_cells_frame(codes) -> gpd.GeoDataFrame:
    """H3 cells (index strings) as hexagon polygons in EPSG:4326: ``region_code``, ``geometry``."""
    import h3
    from shapely.geometry import Polygon

    codes = [str(c) for c in codes]
    polys = [Polygon([(lng, lat) for lat, lng in h3.cell_to_boundary(c)]) for c in codes]
    return gpd.GeoDataFrame({"region_code": codes}, geometry=polys, crs="EPSG:4326")


# ------------------------------------------------------------------- output
#: resolution of the figure files (PNG, and the rasterized parts of the SVG)
SAVE_DPI = 150


def save_figure(fig: Figure, out_dir: str | Path, name: str, dpi: int = SAVE_DPI) -> dict[str, Path]:
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


def scaled_png(png: str | Path, width_px: int, max_scale: float = 1.0) -> bytes:
    """The PNG file ``png`` scaled to ``width_px`` across (at most ``max_scale``×), as PNG bytes.

    The UI copy of a figure made from the file already written (Lanczos, a few
    hundredths of a second) instead of drawing the figure a third time
    (0.3–1 s each: matplotlib renders every path again).
    """
    from PIL import Image

    with Image.open(png) as im:
        width = min(width_px, round(im.width * max_scale))
        if width < im.width:
            height = max(1, round(im.height * width / im.width))
            im = im.resize((width, height), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    return buf.getvalue()


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


def _add_cells(ax, geometry, colors) -> None:
    """Draw polygons (H3 cells) rasterized, one compound path per distinct colour.

    A map of 22,000 cells as one path each costs matplotlib a Python object per
    cell (about 1.4 s to build plus its drawing); the cells of one colour (a
    category, or one of the colour map's 256 levels) as one path draw the same
    pixels in a fraction of that. ``colors`` is one colour or RGBA per cell.
    """
    from matplotlib.collections import PathCollection

    geoms = np.asarray(getattr(geometry, "array", geometry), dtype=object)
    if not len(geoms):
        return
    if isinstance(colors, str):
        faces, group = [colors], np.zeros(len(geoms), dtype=np.int64)
    else:  # every group has cells: np.unique returns only colours that occur
        faces, group = np.unique(np.asarray(colors, dtype=np.float64), axis=0,
                                 return_inverse=True)
        group = group.reshape(-1)
    order = np.argsort(group, kind="stable")
    paths = _polygon_paths(geoms[order], group[order])
    ax.add_collection(PathCollection(paths, facecolors=faces, linewidths=0, rasterized=True))

def landscape_map(cells: gpd.GeoDataFrame, countries: gpd.GeoDataFrame, code: str,
                  column: str, title: str) -> Figure:
    """The study country (outline) with its H3 cells by ``category`` or ``tourist_share``.

    The share is drawn on a diverging scale centred on the dataset-wide share
    (``overall_share``); cells without classified userdays are left light grey.
    """
    fig = _figure(8, 8)
    ax = fig.add_subplot()
    region = countries[countries["country_code"] == code]
    draw_polygons(ax, region.geometry, "white", "#555555", 0.6)
    if column == "category":
        for cat, color in LANDSCAPE_COLORS.items():
            sel = cells[cells["category"] == cat]
            _add_cells(ax, sel.geometry, color)
            ax.plot([], [], "s", color=color, label=f"{cat} ({len(sel):,})")
        ax.legend(loc="lower left", fontsize=8, frameon=True)
    else:
        overall = float(cells["overall_share"].iloc[0]) if len(cells) else 0.5
        vc = min(max(overall, 1e-6), 1 - 1e-6)
        norm = mcolors.TwoSlopeNorm(vmin=0.0, vcenter=vc, vmax=1.0)
        known = cells[cells[column].notna()]
        _add_cells(ax, cells[cells[column].isna()].geometry, NO_DATA_COLOR)
        if len(known):
            cmap = matplotlib.colormaps["RdBu_r"]
            _add_cells(ax, known.geometry, cmap(norm(known[column].to_numpy(dtype=float))))
            bar = fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, shrink=0.6)
            bar.set_label(f"tourist share (centre: overall {overall:.1%})")
    minx, miny, maxx, maxy = region.total_bounds if len(region) else cells.total_bounds
    ax.set_xlim(minx, maxx)
    ax.set_ylim(miny, maxy)
    ax.set_aspect(1 / max(np.cos(np.radians((miny + maxy) / 2)), 0.1))
    ax.set_title(title)
    ax.set_axis_off()
    return fig
