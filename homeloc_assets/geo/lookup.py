"""Point-in-country lookup: many (lon, lat) points -> country index, fast and exact.

This module owns the assignment of coordinates to countries. The answer for
each point is the index (row position) of the country polygon that contains it
strictly (interior, like ``geopandas.sjoin(..., predicate="within")``), the
lowest index when several do, and -1 when none does.

Speed comes from a precomputed grid over the globe (0.25 degree cells by
default), built with exact shapely tests of each (slightly enlarged) cell box:

* a cell whose lowest-index intersecting country *properly contains* the box
  answers every point in it with that index (vectorised O(1));
* a cell intersecting no country answers -1;
* only points in the remaining boundary cells are tested exactly, with
  prepared polygons and ``shapely.contains_xy`` against the few candidate
  countries of their cell; each distinct coordinate pair is tested once.

The grid is built coarse-to-fine (4 degree cells subdivided down to the target
resolution), so only boundary regions are ever refined. The object pickles
(prepared geometry state is rebuilt lazily) and can be cached on disk with
:meth:`CountryLookup.save` / :meth:`CountryLookup.load` (one ``.npz``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import shapely

__all__ = ["CountryLookup", "exact_lookup"]

_FORMAT_VERSION = 1
#: Enlargement of every cell box (degrees): a point whose computed cell is k is
#: always inside the enlarged box k even after floating point rounding.
_EPS = 1e-9
_COARSE = 4.0  # degrees of the first level of the grid

INSIDE_NONE = -1  # grid value: no country touches the cell
BOUNDARY = -2  # grid value: exact test needed


def _geometries(countries) -> np.ndarray:
    if hasattr(countries, "geometry"):
        geoms = np.asarray(countries.geometry.array, dtype=object)
    else:
        geoms = np.asarray(countries, dtype=object)
    return geoms


def exact_lookup(geoms: np.ndarray, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Reference answer (slow, simple): lowest index of a geometry strictly containing each point.

    Used by the tests and for verification; same semantics as
    ``sjoin(points, countries, predicate="within")`` keeping the lowest index.
    """
    geoms = np.asarray(geoms, dtype=object)
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    out = np.full(lon.shape, -1, dtype=np.int32)
    tree = shapely.STRtree(geoms)
    pts = shapely.points(lon, lat)
    pi, gi = tree.query(pts, predicate="within")
    if len(pi):
        order = np.lexsort((gi, pi))
        pi, gi = pi[order], gi[order]
        first = np.ones(len(pi), dtype=bool)
        first[1:] = pi[1:] != pi[:-1]
        out[pi[first]] = gi[first]
    return out


class CountryLookup:
    """Grid-accelerated exact point-in-country lookup (see the module docstring).

    Build with :meth:`from_countries` (a GeoDataFrame with a geometry column,
    index order = answer order); query with :meth:`lookup`.
    """

    def __init__(
        self,
        geoms: np.ndarray,
        cell: float,
        grid: np.ndarray,
        cand_ptr: np.ndarray,
        cand_idx: np.ndarray,
        names: list[str] | None = None,
        codes: list[str] | None = None,
    ) -> None:
        self.geoms = np.asarray(geoms, dtype=object)
        self.cell = float(cell)
        self.grid = np.ascontiguousarray(grid, dtype=np.int32)  # (nrows, ncols)
        self.cand_ptr = np.ascontiguousarray(cand_ptr, dtype=np.int64)  # per boundary id
        self.cand_idx = np.ascontiguousarray(cand_idx, dtype=np.int32)
        self.names = list(names) if names is not None else None
        self.codes = list(codes) if codes is not None else None
        self._prepared = False

    # ------------------------------------------------------------------ build
    @classmethod
    def from_countries(cls, countries, cell: float = 0.25) -> CountryLookup:
        """Build the grid for ``countries`` (GeoDataFrame or array of polygons).

        ``cell`` must be 4 degrees divided by a power of two (4, 2, 1, 0.5,
        0.25, 0.125, ...). Row order of ``countries`` is the answer order.
        """
        levels = np.log2(_COARSE / cell) if cell > 0 else -1.0
        if levels < 0 or abs(levels - round(levels)) > 1e-9:
            raise ValueError(f"cell must be 4 / 2**k degrees, got {cell}")
        levels = round(levels)
        geoms = _geometries(countries)
        if len(geoms) == 0 or np.any(shapely.is_missing(geoms)):
            raise ValueError(
                "countries must be a non-empty sequence of polygons without missing values"
            )
        shapely.prepare(geoms)
        tree = shapely.STRtree(geoms)
        nrows, ncols = round(180 / cell), round(360 / cell)
        grid = np.full((nrows, ncols), INSIDE_NONE, dtype=np.int32)

        n0r, n0c = int(180 // _COARSE), int(360 // _COARSE)
        ci, cj = (a.ravel() for a in np.meshgrid(np.arange(n0r), np.arange(n0c), indexing="ij"))
        size = _COARSE
        for level in range(levels + 1):
            x0 = -180.0 + cj * size
            y0 = -90.0 + ci * size
            boxes = shapely.box(x0 - _EPS, y0 - _EPS, x0 + size + _EPS, y0 + size + _EPS)
            bi, gi = tree.query(boxes)  # bounding-box candidates
            # exact test with the prepared country as first argument (fast)
            hit = shapely.intersects(geoms[gi], boxes[bi])
            bi, gi = bi[hit], gi[hit]
            order = np.lexsort((gi, bi))
            bi, gi = bi[order], gi[order]
            n = len(boxes)
            counts = np.bincount(bi, minlength=n)
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            has = counts > 0
            first_g = np.full(n, INSIDE_NONE, dtype=np.int64)
            first_g[has] = gi[starts[has]]
            inside = np.zeros(n, dtype=bool)
            idx = np.flatnonzero(has)
            if len(idx):
                inside[idx] = shapely.contains_properly(geoms[first_g[idx]], boxes[idx])
            f = 2 ** (levels - level)  # fine cells per side of a cell at this level
            decided = np.flatnonzero(~has | inside)
            if len(decided):
                ar = np.arange(f)
                rr = ci[decided][:, None, None] * f + ar[None, :, None]
                cc = cj[decided][:, None, None] * f + ar[None, None, :]
                grid[rr, cc] = first_g[decided][:, None, None].astype(np.int32)
            undecided = np.flatnonzero(has & ~inside)
            if level == levels:
                ucount = counts[undecided]
                offs = np.repeat(
                    starts[undecided] - np.concatenate([[0], np.cumsum(ucount)[:-1]]), ucount
                )
                cands = gi[offs + np.arange(int(ucount.sum()))].astype(np.int32)
                ids = np.arange(len(undecided), dtype=np.int64)
                grid[ci[undecided], cj[undecided]] = (BOUNDARY - ids).astype(np.int32)
                cand_ptr = np.concatenate([[0], np.cumsum(ucount)]).astype(np.int64)
                break
            ci = (ci[undecided][:, None] * 2 + np.array([0, 0, 1, 1])).ravel()
            cj = (cj[undecided][:, None] * 2 + np.array([0, 1, 0, 1])).ravel()
            size /= 2
        names = codes = None
        if hasattr(countries, "columns"):
            if "country" in countries.columns:
                names = [str(x) for x in countries["country"]]
            if "country_code" in countries.columns:
                codes = [str(x) for x in countries["country_code"]]
        obj = cls(geoms, cell, grid, cand_ptr, cands, names, codes)
        obj._prepared = True
        return obj

    # ----------------------------------------------------------------- query
    def __len__(self) -> int:
        return len(self.geoms)

    @property
    def n_boundary_cells(self) -> int:
        """Number of grid cells needing the exact test."""
        return len(self.cand_ptr) - 1

    def _prepare(self) -> None:
        if not self._prepared:
            shapely.prepare(self.geoms)
            self._prepared = True

    def cells(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """Grid value of each point's cell (>= 0 country, -1 none, <= -2 boundary id)."""
        r = np.floor((lat + 90.0) / self.cell)
        c = np.floor((lon + 180.0) / self.cell)
        r = np.clip(r, 0, self.grid.shape[0] - 1).astype(np.intp)
        c = np.clip(c, 0, self.grid.shape[1] - 1).astype(np.intp)
        return self.grid[r, c]

    def lookup(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """Country index (int32) of each point, -1 where no country contains it.

        Exactly the answer of :func:`exact_lookup` (strict interior, lowest
        index wins). Points outside [-180, 180] x [-90, 90] or not finite give
        -1; validating coordinates is the reader's job.
        """
        lon = np.asarray(lon, dtype=np.float64)
        lat = np.asarray(lat, dtype=np.float64)
        if lon.shape != lat.shape:
            raise ValueError(f"lon and lat differ in shape: {lon.shape} vs {lat.shape}")
        shape = lon.shape
        lon, lat = lon.ravel(), lat.ravel()
        ok = (lat >= -90.0) & (lat <= 90.0) & (lon >= -180.0) & (lon <= 180.0)  # False for NaN
        if not ok.all():
            lon = np.where(ok, lon, 0.0)
            lat = np.where(ok, lat, 0.0)
        out = self.cells(lon, lat)
        if not ok.all():
            out = np.where(ok, out, INSIDE_NONE).astype(np.int32)
        bnd = np.flatnonzero(out <= BOUNDARY)
        if len(bnd):
            out = out.copy() if out.base is not None else out
            out[bnd] = self._exact_boundary(
                lon[bnd], lat[bnd], BOUNDARY - out[bnd].astype(np.int64)
            )
        return out.reshape(shape)

    def _exact_boundary(self, x: np.ndarray, y: np.ndarray, bid: np.ndarray) -> np.ndarray:
        """Exact answer for points in boundary cells; each distinct (x, y) tested once."""
        self._prepare()
        key = np.empty(len(x), dtype=np.complex128)
        key.real, key.imag = x, y
        ukey, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        ux, uy, ubid = ukey.real, ukey.imag, bid[first]
        counts = self.cand_ptr[ubid + 1] - self.cand_ptr[ubid]
        pt = np.repeat(np.arange(len(ux)), counts)
        pos = np.repeat(self.cand_ptr[ubid] - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
        cand = self.cand_idx[pos + np.arange(len(pt))]
        res = np.full(len(ux), np.iinfo(np.int32).max, dtype=np.int64)
        order = np.argsort(cand, kind="stable")
        pt, cand = pt[order], cand[order]
        bounds = np.flatnonzero(np.diff(cand)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(cand)], strict=True):
            if hi <= lo:
                continue
            g = int(cand[lo])
            sel = pt[lo:hi]
            hit = shapely.contains_xy(self.geoms[g], ux[sel], uy[sel])
            np.minimum.at(res, sel[hit], g)
        res[res == np.iinfo(np.int32).max] = INSIDE_NONE
        return res.astype(np.int32)[inverse.ravel()]

    # ------------------------------------------------------- pickle and disk
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_prepared"] = False
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._prepared = False

    def geometry_digest(self) -> str:
        """sha1 of the countries' WKB (and names): identifies the polygons a grid was built for."""
        h = hashlib.sha1()
        for wkb in shapely.to_wkb(self.geoms):
            h.update(len(wkb).to_bytes(8, "little"))
            h.update(wkb)
        return h.hexdigest()

    def save(self, path: str | Path) -> Path:
        """Write the lookup (grid, candidates, polygons as WKB, names, codes) to one ``.npz``."""
        path = Path(path)
        wkbs = shapely.to_wkb(self.geoms)
        lens = np.array([len(w) for w in wkbs], dtype=np.int64)
        blob = np.frombuffer(b"".join(wkbs), dtype=np.uint8)
        meta = {
            "version": _FORMAT_VERSION,
            "cell": self.cell,
            "names": self.names,
            "codes": self.codes,
            "digest": self.geometry_digest(),
        }
        import json

        with open(path, "wb") as fh:
            np.savez(
                fh,
                grid=self.grid,
                cand_ptr=self.cand_ptr,
                cand_idx=self.cand_idx,
                wkb=blob,
                wkb_len=lens,
                meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            )
        return path

    @classmethod
    def load(cls, path: str | Path, countries=None) -> CountryLookup:
        """Read a lookup written by :meth:`save`.

        With ``countries`` given, raise ``ValueError`` unless the cache was built
        from exactly these polygons (stale cache protection).
        """
        import json

        with np.load(Path(path), allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            if meta.get("version") != _FORMAT_VERSION:
                raise ValueError(f"{path}: unsupported lookup cache version {meta.get('version')}")
            blob = z["wkb"].tobytes()
            lens = z["wkb_len"]
            ends = np.cumsum(lens)
            wkbs = [blob[e - n : e] for e, n in zip(ends.tolist(), lens.tolist(), strict=True)]
            obj = cls(
                shapely.from_wkb(wkbs),
                meta["cell"],
                z["grid"],
                z["cand_ptr"],
                z["cand_idx"],
                meta.get("names"),
                meta.get("codes"),
            )
        if meta.get("digest") != obj.geometry_digest():
            raise ValueError(f"{path}: corrupt lookup cache (geometry digest mismatch)")
        if countries is not None:
            other = cls(
                _geometries(countries), obj.cell, obj.grid[:0], obj.cand_ptr[:1], obj.cand_idx[:0]
            )
            if other.geometry_digest() != obj.geometry_digest():
                raise ValueError(f"{path}: lookup cache was built for other country polygons")
        return obj
