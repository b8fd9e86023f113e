"""Region layers: what a point's region is, at any level (countries, any polygons, H3 cells).

A layer owns its loading, its lookup of points and its naming, so that the
batch step, the exports and the reports iterate over layers instead of naming
countries.  ``country`` (Natural Earth admin-0) is one layer; a polygon file
(GeoPackage, GeoParquet, shapefile: NUTS regions, states, municipalities) is
another; an H3 resolution is a third kind that needs no polygons.

Contract of a layer spec (``homeloc run --layer NAME=SPEC``,
``HOMELOC_LAYERS="NAME=SPEC;NAME=SPEC"``): ``SPEC`` is ``h3:RES`` or
``PATH[#NAME_COLUMN,CODE_COLUMN]`` (default columns ``name,code``).

Why h3ronpy next to h3: ``h3.latlng_to_cell`` is a scalar call (about 1.2 s
per million points in a Python loop); h3ronpy's ``coordinates_to_cells`` is
the same H3 C library vectorised over Arrow arrays (0.4 s per million, and
only distinct coordinates are looked up).  Cells equal ``h3.latlng_to_cell``
bit for bit (tested).  No Dagster here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from homeloc_assets.geo.countries import CountryError

COUNTRY_LAYER = "country"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
H3_MAX_RESOLUTION = 15


class LayerError(ValueError):
    """A layer spec or a layer file that cannot be used, with the reason."""


@dataclass(frozen=True)
class LayerSpec:
    """One configured region layer (parsed, not yet loaded)."""

    name: str
    kind: str  # "h3" | "polygons"
    resolution: int | None = None
    path: str | None = None
    name_column: str = "name"
    code_column: str = "code"

    @property
    def spec(self) -> str:
        """The spec text this layer was parsed from (normalised)."""
        if self.kind == "h3":
            return f"h3:{self.resolution}"
        return f"{self.path}#{self.name_column},{self.code_column}"

    def __str__(self) -> str:
        return f"{self.name}={self.spec}"


def parse_layer(text: str) -> LayerSpec:
    """``NAME=h3:RES`` or ``NAME=PATH[#NAME_COLUMN,CODE_COLUMN]`` -> :class:`LayerSpec`."""
    name, sep, spec = str(text).strip().partition("=")
    name, spec = name.strip(), spec.strip()
    if not sep or not name or not spec:
        raise LayerError(f"layer {text!r}: expected NAME=h3:RES or NAME=PATH[#NAME_COLUMN,CODE_COLUMN]")
    if not _NAME.match(name):
        raise LayerError(
            f"layer name {name!r}: use lower-case letters, digits and _ (it names assets and files)"
        )
    if name == COUNTRY_LAYER:
        raise LayerError(f"layer name {COUNTRY_LAYER!r} is the built-in country layer; choose another")
    if spec.lower().startswith("h3:"):
        raw = spec[3:].strip()
        if not raw.isdigit() or not 0 <= int(raw) <= H3_MAX_RESOLUTION:
            raise LayerError(f"layer {name}: H3 resolution {raw!r} must be 0..{H3_MAX_RESOLUTION}")
        return LayerSpec(name, "h3", resolution=int(raw))
    path, hashmark, cols = spec.partition("#")
    name_col, code_col = "name", "code"
    if hashmark:
        parts = [c.strip() for c in cols.split(",")]
        if len(parts) != 2 or not all(parts):
            raise LayerError(f"layer {name}: after '#' give NAME_COLUMN,CODE_COLUMN, got {cols!r}")
        name_col, code_col = parts
    return LayerSpec(name, "polygons", path=path.strip(), name_column=name_col, code_column=code_col)


def parse_layers(items: str | list[str] | tuple[str, ...] | None) -> tuple[LayerSpec, ...]:
    """Several specs: a ``;``-separated string (the environment form) or a list (repeated flags)."""
    if not items:
        return ()
    if isinstance(items, str):
        items = [s for s in items.split(";") if s.strip()]
    specs = tuple(parse_layer(s) for s in items)
    names = [s.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise LayerError(f"layer name(s) {twice} given more than once")
    return specs


def layer_assets(name: str) -> tuple[str, str]:
    """The per-batch asset (and export) names of layer ``name``: (region userdays, homes)."""
    return f"user_region_userdays_{name}", f"user_home_{name}"


@dataclass
class Located:
    """The region of each point: ``index`` into ``names``/``codes`` (-1: in no region)."""

    index: np.ndarray
    names: np.ndarray
    codes: np.ndarray


class H3Layer:
    """H3 cells at one resolution: the region of a point is its cell (every point has one)."""

    def __init__(self, name: str, resolution: int) -> None:
        self.name = name
        self.resolution = int(resolution)

    def locate(self, lon: np.ndarray, lat: np.ndarray) -> Located:
        """Cells of the distinct coordinates, in ascending cell order (the tie-break order)."""
        import pyarrow as pa
        from h3ronpy import cells_to_string
        from h3ronpy.vector import coordinates_to_cells

        lon = np.asarray(lon, dtype=np.float64)
        lat = np.asarray(lat, dtype=np.float64)
        if len(lon) == 0:
            empty = np.zeros(0, dtype=object)
            return Located(np.zeros(0, dtype=np.int64), empty, empty)
        pairs = np.empty(len(lon), dtype=[("lat", "f8"), ("lon", "f8")])
        pairs["lat"], pairs["lon"] = lat, lon
        uniq, inverse = np.unique(pairs, return_inverse=True)
        cells = np.asarray(pa.array(coordinates_to_cells(
            np.ascontiguousarray(uniq["lat"]), np.ascontiguousarray(uniq["lon"]), self.resolution)))
        ucells, cell_of_pair = np.unique(cells, return_inverse=True)
        codes = np.asarray(pa.array(cells_to_string(pa.array(ucells, pa.uint64()))).to_pylist(),
                           dtype=object)
        return Located(cell_of_pair[inverse.ravel()].astype(np.int64), codes, codes)


class PolygonLayer:
    """Regions from a polygon file, dissolved by name, sorted by name (index = tie-break order)."""

    def __init__(self, name: str, names, codes, lookup) -> None:
        self.name = name
        self.names = np.asarray(list(names), dtype=object)
        self.codes = np.asarray(list(codes), dtype=object)
        self.lookup = lookup

    def locate(self, lon: np.ndarray, lat: np.ndarray) -> Located:
        """Exact point-in-polygon via the grid lookup (boundary cells tested exactly)."""
        idx = np.asarray(self.lookup.lookup(np.asarray(lon), np.asarray(lat)), dtype=np.int64)
        return Located(idx, self.names, self.codes)


def check_region_code(layer, code: str) -> None:
    """Raise :class:`LayerError` unless ``code`` names a region of ``layer``."""
    if isinstance(layer, H3Layer):
        import h3

        if not h3.is_valid_cell(code) or h3.get_resolution(code) != layer.resolution:
            raise LayerError(f"study region {code!r} is not an H3 cell of resolution "
                             f"{layer.resolution} (layer {layer.name})")
        return
    codes = [str(c) for c in layer.codes]
    if code not in codes:
        import difflib

        close = difflib.get_close_matches(code, codes, n=5, cutoff=0.5)
        names = [str(layer.names[codes.index(c)]) for c in close]
        hint = f" Close: {', '.join(f'{c} ({n})' for c, n in zip(close, names, strict=True))}." if close else ""
        raise LayerError(f"study region {code!r} is no region code of layer {layer.name} "
                         f"({len(codes)} regions).{hint}")


def load_regions(spec: LayerSpec):
    """The dissolved polygons of a polygon layer: ``GeoDataFrame[country, country_code, geometry]``.

    The columns keep the country layer's names internally (one loader for
    both); the layer's exports call them ``region``/``region_code``.
    """
    from homeloc_assets.geo.countries import dissolve_countries, load_world_countries

    if spec.kind != "polygons" or not spec.path:
        raise LayerError(f"layer {spec.name}: not a polygon layer")
    path = Path(spec.path)
    if not path.exists():
        raise LayerError(f"layer {spec.name}: file not found: {path}")
    try:
        if path.suffix.lower() in (".parquet", ".geoparquet"):
            regions = _read_geoparquet(path, spec)
        else:
            regions = load_world_countries(path, spec.name_column, spec.code_column)
        regions = dissolve_countries(regions)
    except CountryError as exc:
        raise LayerError(f"layer {spec.name}: {exc}".replace("country file", "file")) from None
    if len(regions) == 0:
        raise LayerError(f"layer {spec.name}: {path} has no polygons")
    return regions


def _read_geoparquet(path: Path, spec: LayerSpec):
    import geopandas as gpd

    try:
        df = gpd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow/geopandas raise several types
        raise LayerError(f"layer {spec.name}: cannot read {path}: {exc}") from None
    missing = [c for c in (spec.name_column, spec.code_column) if c not in df.columns]
    if missing:
        has = ", ".join(str(c) for c in df.columns if c != df.geometry.name)
        raise LayerError(f"layer {spec.name}: {path} lacks column(s) {', '.join(missing)}; "
                         f"it has {has}")
    if df.crs is None:
        raise LayerError(f"layer {spec.name}: {path} has no coordinate reference system")
    if not df.crs.equals("EPSG:4326"):
        df = df.to_crs("EPSG:4326")
    return gpd.GeoDataFrame(
        {"country": df[spec.name_column].astype(str).str.strip().to_numpy(dtype=object),
         "country_code": df[spec.code_column].astype(str).str.strip().to_numpy(dtype=object)},
        geometry=df.geometry.to_numpy(), crs="EPSG:4326")


def build_layer(spec: LayerSpec, regions=None, lookup=None):
    """A ready layer object for the workers (picklable)."""
    if spec.kind == "h3":
        return H3Layer(spec.name, spec.resolution or 0)
    from homeloc_assets.geo.lookup import CountryLookup

    regions = load_regions(spec) if regions is None else regions
    if lookup is None:
        lookup = CountryLookup.from_countries(regions)
        lookup.names = [str(n) for n in regions["country"]]
        lookup.codes = [str(c) for c in regions["country_code"]]
    return PolygonLayer(spec.name, regions["country"], regions["country_code"], lookup)


def load_layer(spec: LayerSpec, cache_dir: str | Path | None = None):
    """:func:`build_layer`, with a polygon layer's dissolved grid lookup cached on disk.

    The cache key is the file's path, size, mtime and columns: a changed file
    is loaded again; a damaged cache is rebuilt.
    """
    if spec.kind == "h3" or cache_dir is None:
        return build_layer(spec)
    import hashlib
    import json

    from homeloc_assets.geo.lookup import CountryLookup
    from homeloc_assets.layout import lookup_file

    path = Path(spec.path or "")
    try:
        st = path.stat()
    except OSError:
        raise LayerError(f"layer {spec.name}: file not found: {path}") from None
    key = json.dumps([str(path.resolve()), st.st_size, st.st_mtime_ns, spec.name_column,
                      spec.code_column])
    cache = lookup_file(cache_dir, f"layer-{spec.name}", hashlib.sha1(key.encode()).hexdigest()[:16])
    if cache.exists():
        try:
            lookup = CountryLookup.load(cache)
            return PolygonLayer(spec.name, lookup.names, lookup.codes, lookup)
        except Exception:  # noqa: BLE001 - a stale or damaged cache is rebuilt
            cache.unlink(missing_ok=True)
    layer = build_layer(spec)
    cache.parent.mkdir(parents=True, exist_ok=True)
    from homeloc_assets.atomic import atomic_path

    with atomic_path(cache) as tmp:
        layer.lookup.save(tmp)
    return layer
