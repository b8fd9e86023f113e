"""Landscape traces: per H3 cell and class the union of userday HLLs, and a binomial test.

No Dagster here. Per batch, :func:`batch_cells` groups the study country's
location rows by (H3 cell, class of the row's user) and unions their userday
HLLs with the engine (``hll_union_agg``); :func:`combine` unions the batch
tables again per (cell, class) — postgresql-hll's union is associative, so the
bytes equal one union over all rows. :func:`landscape_table` pools each cell
with its k-ring neighbours (HLL union, users counted distinct), tests the
pooled tourist share against the dataset-wide share (two-sided binomial test,
Benjamini–Yekutieli over all tested cells) and gives each cell a category.

An *observation* of the test is an estimated distinct userday (a user active
on a day in the cell) of a classified user: ``n = round(local) +
round(tourist)`` pooled userdays, ``k = round(tourist)`` — the
privacy-preserving analogue of the chapter's posts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import h3ronpy
import h3ronpy.vector as h3v
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.stats import binom, false_discovery_control

from homeloc_assets.hll import grouped_union
from homeloc_assets.inference.homes import CLASS_LOCAL, CLASS_TOURIST, CLASS_UNDETERMINED

CLASSES = (CLASS_LOCAL, CLASS_TOURIST, CLASS_UNDETERMINED)
_PREFIX = ("local", "tourist", "undetermined")
CATEGORIES = ("touristic", "local", "not different", "too little data")
#: rows of batch tables held before they are unioned down (bounds memory)
_COMBINE_ROWS = 2_000_000

BATCH_SCHEMA = pa.schema([
    ("cell", pa.uint64()), ("cls", pa.int8()), ("hll", pa.large_binary()),
    ("users", pa.int64()), ("ring_users", pa.int64()), ("locations", pa.int64()),
])


@dataclass(frozen=True)
class LandscapeParams:
    """Cell size, pooling and the test's thresholds (see README, "Landscape")."""

    resolution: int = 8
    ring: int = 1
    min_observations: int = 30
    min_difference: float = 0.10
    max_q: float = 0.05

    def validated(self) -> LandscapeParams:
        """Raise ValueError naming the setting that is out of range."""
        if not 0 <= self.resolution <= 15:
            raise ValueError(f"cell resolution {self.resolution}: must be 0..15")
        if self.ring < 0:
            raise ValueError(f"cell ring {self.ring}: must be >= 0")
        if self.min_observations < 1:
            raise ValueError(f"min observations {self.min_observations}: must be >= 1")
        if not 0 <= self.min_difference <= 1 or not 0 < self.max_q <= 1:
            raise ValueError("min difference must be in [0, 1] and max q in (0, 1]")
        return self


def cells_of(lat: np.ndarray, lon: np.ndarray, resolution: int) -> np.ndarray:
    """H3 cell (uint64) of each point, vectorised (equals ``h3.latlng_to_cell``)."""
    lat = np.ascontiguousarray(lat, dtype=np.float64)
    lon = np.ascontiguousarray(lon, dtype=np.float64)
    if not len(lat):
        return np.zeros(0, np.uint64)
    return pa.array(h3v.coordinates_to_cells(lat, lon, resolution)).to_numpy()


def _rings(cells: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(center_index, neighbour)`` of every cell in each cell's k-ring (itself included)."""
    if k == 0 or not len(cells):
        return np.arange(len(cells)), cells.copy()
    disk = pa.array(h3ronpy.grid_disk(pa.array(cells, pa.uint64()), k, flatten=False))
    lengths = pc.list_value_length(disk).to_numpy()
    flat = disk.flatten().to_numpy()
    return np.repeat(np.arange(len(cells)), lengths), flat


#: with a study region (nested classes) both kinds of tourists count as Tourists here
_ALIASES = (*CLASSES, "Domestic tourist", "International tourist")
_ALIAS_CODE = np.array([0, 1, 2, 1, 1], dtype=np.int8)


def class_codes(classification: pa.Array) -> np.ndarray:
    """0 Local, 1 Tourist (also Domestic/International tourist), 2 undetermined (int8)."""
    idx = pc.index_in(classification, pa.array(_ALIASES))
    if idx.null_count:
        bad = pc.filter(classification, pc.is_null(idx))[0]
        raise ValueError(f"class {bad} is not one of {CLASSES}")
    return _ALIAS_CODE[np.asarray(idx.to_numpy(zero_copy_only=False), dtype=np.int64)]


def batch_cells(
    locations: pa.Table, classes: pa.Table, study_country_code: str, resolution: int, ring: int
) -> pa.Table:
    """Per (cell, class) of one batch: union HLL, distinct users, users in the k-ring, rows.

    ``locations``: ``user_guid, latitude, longitude, country_code, userday_hll``;
    ``classes``: ``user_guid, classification`` of the batch's users. Only rows in
    the study country count. ``ring_users`` rows may name cells without rows
    of their own (they are a neighbour of one); their ``hll`` is null.
    """
    inside = pc.fill_null(pc.equal(locations.column("country_code"),
                                   pa.scalar(study_country_code)), False)
    loc = locations.filter(inside)
    uidx = pc.index_in(loc.column("user_guid"), classes.column("user_guid")).to_numpy(
        zero_copy_only=False)
    if len(uidx) and np.isnan(np.asarray(uidx, dtype=float)).any():
        raise ValueError("a location's user has no classification")
    uidx = np.asarray(uidx, dtype=np.int64)
    ucls = class_codes(classes.column("classification"))
    cls = ucls[uidx]
    cells = cells_of(loc.column("latitude").to_numpy(), loc.column("longitude").to_numpy(),
                     resolution)
    ucells, cid = np.unique(cells, return_inverse=True)
    key = cid.astype(np.int64) * 3 + cls
    gkey, ginv, gcount = np.unique(key, return_inverse=True, return_counts=True)
    _, blobs = grouped_union(loc.column("userday_hll"), ginv, len(gkey))
    # distinct users per (cell, class): a user has one class
    pair = _sorted_unique(cid.astype(np.int64) * (len(ucls) + 1) + uidx)
    pc_cell, pc_user = pair // (len(ucls) + 1), pair % (len(ucls) + 1)
    users = np.bincount(np.searchsorted(gkey, pc_cell * 3 + ucls[pc_user]), minlength=len(gkey))
    # users counted distinct over each cell's k-ring: expand (user, cell) to the
    # cells whose ring contains it (the ring is symmetric), then unique
    center, nbr = _rings(ucells, ring)
    order = np.argsort(center, kind="stable")
    starts = np.searchsorted(center[order], np.arange(len(ucells)))
    lens = np.bincount(center, minlength=len(ucells))
    rep = lens[pc_cell]
    base = np.repeat(starts[pc_cell], rep) + _ranges_within(rep)
    tgt = nbr[order][base]
    tcells, tid = np.unique(tgt, return_inverse=True)
    tu = np.repeat(pc_user, rep)
    tkey = _sorted_unique(tid.astype(np.int64) * (len(ucls) + 1) + tu)
    t_cell, t_user = tkey // (len(ucls) + 1), tkey % (len(ucls) + 1)
    rkey, rcount = np.unique(t_cell * 3 + ucls[t_user], return_counts=True)
    # one table keyed by (cell, class), sorted; every own group is a ring group
    # (a cell is in its own ring), so own columns are scattered into ring rows
    at = np.searchsorted(rkey, np.searchsorted(tcells, ucells[gkey // 3]) * 3 + gkey % 3)
    nr = len(rkey)
    hll_idx = np.full(nr, -1, np.int64)
    hll_idx[at] = np.arange(len(gkey))
    own_users = np.zeros(nr, np.int64)
    own_users[at] = users
    own_rows = np.zeros(nr, np.int64)
    own_rows[at] = gcount
    return pa.table({
        "cell": pa.array(tcells[rkey // 3], pa.uint64()),
        "cls": pa.array((rkey % 3).astype(np.int8)),
        "hll": pa.array(blobs, pa.large_binary()).take(pa.array(hll_idx, mask=hll_idx < 0)),
        "users": pa.array(own_users), "ring_users": pa.array(rcount.astype(np.int64)),
        "locations": pa.array(own_rows),
    }, schema=BATCH_SCHEMA)


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """Sorted distinct values (a sort: faster here than numpy's hash-based unique)."""
    a = np.sort(a)
    keep = np.ones(len(a), bool)
    keep[1:] = a[1:] != a[:-1]
    return a[keep]


def _ranges_within(rep: np.ndarray) -> np.ndarray:
    """0..r-1 for each r in ``rep``, concatenated."""
    total = int(rep.sum())
    if not total:
        return np.zeros(0, np.int64)
    ends = np.cumsum(rep)
    return np.arange(total) - np.repeat(ends - rep, rep)


def _reduce(t: pa.Table) -> pa.Table:
    """Union rows of equal (cell, class): HLL union, counts summed (a user is in one batch)."""
    cell = t.column("cell").to_numpy()
    cls = t.column("cls").to_numpy().astype(np.int64)
    ucell, cinv = np.unique(cell, return_inverse=True)
    key = cinv.astype(np.int64) * 3 + cls
    gkey, ginv = np.unique(key, return_inverse=True)
    _, blobs = grouped_union(t.column("hll"), ginv, len(gkey))

    def total(name: str) -> pa.Array:
        return pa.array(np.bincount(ginv, weights=t.column(name).to_numpy(),
                                    minlength=len(gkey)).astype(np.int64))

    return pa.table({
        "cell": pa.array(ucell[gkey // 3], pa.uint64()),
        "cls": pa.array((gkey % 3).astype(np.int8)),
        "hll": pa.array(blobs, pa.large_binary()),
        "users": total("users"), "ring_users": total("ring_users"),
        "locations": total("locations"),
    }, schema=BATCH_SCHEMA)


def combine(tables: Iterable[pa.Table]) -> pa.Table:
    """Union batch tables per (cell, class); same bytes as one union over all rows."""
    held: list[pa.Table] = []
    rows = 0
    for t in tables:
        held.append(t.select(BATCH_SCHEMA.names).cast(BATCH_SCHEMA))
        rows += t.num_rows
        if rows > _COMBINE_ROWS and len(held) > 1:
            held = [_reduce(pa.concat_tables(held))]
            rows = held[0].num_rows
    if not held:
        return BATCH_SCHEMA.empty_table()
    return _reduce(pa.concat_tables(held))


def _hex_column(blobs: pa.Array) -> pa.Array:
    """bytea hex text (``\\x..``) of a binary column, nulls kept; vectorised."""
    arr = blobs.cast(pa.large_binary())
    n = len(arr)
    bufs = arr.buffers()
    off = np.frombuffer(bufs[1], np.int64)[arr.offset: arr.offset + n + 1]
    data = (np.frombuffer(bufs[2], np.uint8)[off[0]: off[-1]] if bufs[2] is not None
            else np.zeros(0, np.uint8))
    off = off - off[0]
    lut = np.frombuffer(b"0123456789abcdef", np.uint8)
    hexed = np.empty((len(data), 2), np.uint8)
    hexed[:, 0], hexed[:, 1] = lut[data >> 4], lut[data & 15]
    lens = np.diff(off)
    valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), bool)
    out_len = np.where(valid, 2 * lens + 2, 0)
    out = np.empty(int(out_len.sum()), np.uint8)
    ooff = np.concatenate([[0], np.cumsum(out_len)]).astype(np.int64)
    starts = ooff[:-1][valid]
    out[starts] = ord("\\")
    out[starts + 1] = ord("x")
    body = np.ones(len(out), bool)
    body[starts] = body[starts + 1] = False
    out[body] = hexed.reshape(-1)
    validity = pa.py_buffer(np.packbits(valid, bitorder="little").tobytes())
    return pa.LargeStringArray.from_buffers(
        n, pa.py_buffer(ooff.tobytes()), pa.py_buffer(out.tobytes()), validity)


def binom_two_sided(k: np.ndarray, n: np.ndarray, p: float) -> np.ndarray:
    """``scipy.stats.binomtest(k, n, p).pvalue`` (two-sided) for arrays, vectorised.

    The same algorithm as scipy's (likelihood ordering with relative tolerance
    1e-7, binary search for the other tail), run on all cells at once.
    """
    k = np.asarray(k, np.int64)
    n = np.asarray(n, np.int64)
    pv = np.ones(len(k))
    d = binom.pmf(k, n, p)
    rerr = 1 + 1e-7
    pn = p * n
    low = k < pn
    if low.any():
        nl, kl, dl = n[low], k[low], d[low]
        ix = _bsearch(lambda x, i: -binom.pmf(x, nl[i], p), -dl * rerr,
                      np.ceil(p * nl).astype(np.int64), nl.copy())
        y = nl - ix + (dl * rerr == binom.pmf(ix, nl, p)).astype(np.int64)
        pv[low] = binom.cdf(kl, nl, p) + binom.sf(nl - y, nl, p)
    high = k > pn
    if high.any():
        nh, kh, dh = n[high], k[high], d[high]
        ix = _bsearch(lambda x, i: binom.pmf(x, nh[i], p), dh * rerr,
                      np.zeros(len(nh), np.int64), np.floor(p * nh).astype(np.int64))
        y = ix + 1
        pv[high] = binom.cdf(y - 1, nh, p) + binom.sf(kh - 1, nh, p)
    return np.minimum(pv, 1.0)


def _bsearch(a, d: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """scipy's ``_binary_search_for_binom_tst`` on many (d, lo, hi) at once."""
    res = np.zeros(len(d), np.int64)
    found = np.zeros(len(d), bool)
    active = lo < hi
    while active.any():
        i = np.flatnonzero(active)
        mid = lo[i] + (hi[i] - lo[i]) // 2
        mv = a(mid, i)
        less, more = mv < d[i], mv > d[i]
        eq = ~less & ~more
        lo[i[less]] = mid[less] + 1
        hi[i[more]] = mid[more] - 1
        res[i[eq]], found[i[eq]] = mid[eq], True
        active = ~found & (lo < hi)
    rest = np.flatnonzero(~found)
    if len(rest):
        at = a(lo[rest], rest) <= d[rest]
        res[rest] = np.where(at, lo[rest], lo[rest] - 1)
    return res


def landscape_table(combined: pa.Table, params: LandscapeParams) -> tuple[pa.Table, dict]:
    """The contract table (one row per cell with rows of its own) and dataset-wide figures."""
    params = params.validated()
    own = combined.filter(pc.is_valid(combined.column("hll")))
    cells = np.unique(own.column("cell").to_numpy())
    nc = len(cells)
    cols: dict[str, pa.Array] = {
        "cell": pa.array(h3ronpy.cells_to_string(pa.array(cells, pa.uint64()))).cast(pa.string()),
        "resolution": pa.array(np.full(nc, params.resolution, np.int8)),
    }
    ccell = np.searchsorted(cells, combined.column("cell").to_numpy())
    present = ccell < nc
    present[present] = cells[ccell[present]] == combined.column("cell").to_numpy()[present]
    cls_all = combined.column("cls").to_numpy()
    hll_all = combined.column("hll")
    center, nbr = _rings(cells, params.ring)
    npos = np.searchsorted(cells, nbr)
    ok = npos < nc
    ok[ok] = cells[npos[ok]] == nbr[ok]
    center, npos = center[ok], npos[ok]
    pooled = {}
    for c, name in enumerate(_PREFIX):
        rows = np.flatnonzero(present & (cls_all == c))
        at = ccell[rows]
        blobs = pa.nulls(nc, pa.large_binary())
        if len(rows):
            idx = np.full(nc, -1, np.int64)
            idx[at] = rows
            blobs = hll_all.take(pa.array(idx, mask=idx < 0))
            if isinstance(blobs, pa.ChunkedArray):
                blobs = blobs.combine_chunks()
        card, _ = grouped_union(blobs, np.arange(nc), nc)
        cols[f"{name}_userdays"] = pa.array(np.nan_to_num(card, nan=0.0))

        def per_cell(col: str, rows=rows, at=at) -> np.ndarray:
            v = np.zeros(nc, np.int64)
            v[at] = combined.column(col).to_numpy()[rows]
            return v

        cols[f"{name}_users"] = pa.array(per_cell("users"))
        cols[f"{name}_hll"] = _hex_column(blobs)
        # ring users of centres: rows of the combined table of cells with own data
        pooled[f"{name}_users"] = per_cell("ring_users")
        if name != "undetermined":
            pcard, _ = grouped_union(blobs.take(pa.array(npos)), center, nc)
            pooled[f"{name}_userdays"] = np.nan_to_num(pcard, nan=0.0)
    locs = np.zeros(nc, np.int64)
    np.add.at(locs, ccell[present], combined.column("locations").to_numpy()[present])
    cols["locations"] = pa.array(locs)
    lt = np.asarray(cols["local_userdays"]), np.asarray(cols["tourist_userdays"])
    total = float(lt[0].sum() + lt[1].sum())
    overall = float(lt[1].sum()) / total if total else float("nan")
    pl, pt = pooled["local_userdays"], pooled["tourist_userdays"]
    k = np.rint(pt).astype(np.int64)
    n = np.rint(pl).astype(np.int64) + k
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(pl + pt > 0, pt / (pl + pt), np.nan)
    tested = (n >= params.min_observations) & (0 < overall < 1)
    p = np.full(nc, np.nan)
    q = np.full(nc, np.nan)
    if tested.any():
        p[tested] = binom_two_sided(k[tested], n[tested], overall)
        q[tested] = false_discovery_control(p[tested], method="by")
    diff = share - overall
    sig = tested & (q <= params.max_q)
    category = np.full(nc, "too little data", dtype=object)
    category[tested] = "not different"
    category[sig & (diff >= params.min_difference)] = "touristic"
    category[sig & (-diff >= params.min_difference)] = "local"
    cols.update({
        "ring_cells": pa.array(np.bincount(center, minlength=nc).astype(np.int64)),
        "pooled_local_userdays": pa.array(pl), "pooled_tourist_userdays": pa.array(pt),
        "pooled_local_users": pa.array(pooled["local_users"]),
        "pooled_tourist_users": pa.array(pooled["tourist_users"]),
        "observations": pa.array(n), "tourist_observations": pa.array(k),
        "tourist_share": pa.array(share), "overall_share": pa.array(np.full(nc, overall)),
        "difference": pa.array(diff), "p_value": pa.array(p), "q_value": pa.array(q),
        "category": pa.array(category.astype(str), pa.string()),
    })
    counts = {c: int((category == c).sum()) for c in CATEGORIES}
    info = {"cells": nc, "overall_tourist_share": overall, "tested_cells": int(tested.sum()),
            **{c.replace(" ", "_"): v for c, v in counts.items()}}
    return pa.table(cols), info


def cell_polygons(cells: pa.Array):
    """Hexagon polygons (shapely, EPSG:4326) of H3 index strings."""
    import shapely

    ids = pa.array(h3ronpy.cells_parse(cells.cast(pa.string())))
    return shapely.from_wkb(np.asarray(pa.array(h3v.cells_to_wkb_polygons(ids)).to_pylist(),
                                       dtype=object))
