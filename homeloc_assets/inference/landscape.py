"""Landscape traces: per H3 cell and class the union of userday HLLs, and a binomial test.

No Dagster here. Per batch, :func:`batch_cells` groups the study country's
location rows by (H3 cell, class of the row's user) and unions their userday
HLLs with the engine (``hll_union_agg``); :func:`combine` unions the batch
tables again per (cell, class) — postgresql-hll's union is associative, so the
bytes equal one union over all rows. :func:`landscape_table` pools each cell
with its k-ring neighbours (HLL union, users counted distinct), tests the
pooled tourist share against the dataset-wide share (two-sided binomial test,
Benjamini–Yekutieli over all tested cells) and gives each cell a category.

:func:`batch_tables` makes a batch's tables in the batch worker from the rows
it holds (classes from the homes and a :class:`BatchLandscapeSpec`); per
region layer, :func:`batch_regions`, :func:`combine_regions` and
:func:`region_table` give the same per-class unions per region.

An *observation* of the test is an estimated distinct userday (a user active
on a day in the cell) of a classified user: ``n = round(local) +
round(tourist)`` pooled userdays, ``k = round(tourist)`` — the
privacy-preserving analogue of the chapter's posts.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import h3ronpy
import h3ronpy.vector as h3v
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from homeloc_assets.hll import ParsedColumn, grouped_cardinality, grouped_union_arrow
from homeloc_assets.hll._hex import arrow_buffers, not_null_mask
from homeloc_assets.inference.homes import CLASS_LOCAL, CLASS_TOURIST, CLASS_UNDETERMINED

CLASSES = (CLASS_LOCAL, CLASS_TOURIST, CLASS_UNDETERMINED)
_PREFIX = ("local", "tourist", "undetermined")
CATEGORIES = ("touristic", "local", "not different", "too little data")
#: rows of batch tables held before they are unioned down (bounds memory)
_COMBINE_ROWS = 2_000_000
#: HLL bytes held before they are unioned down, or twice the last union's if more (heavy
#: users' batch tables are mostly FULL unions: 20 of them held 2.3 GB at 1 M users)
_COMBINE_BYTES = 128 << 20
#: HLL bytes unioned at once by :func:`union_groups`: parsing takes about 16x their
#: bytes; the 126 batch tables of 6.25 M seed-shape users combined with a peak of 1.07 GB
#: in 8.4 s with 1 MiB slices (1.36 GB, 10.8 s with 16 MiB; 1.81 GB, 11.1 s unsliced)
_UNION_BYTES = 1 << 20

BATCH_SCHEMA = pa.schema([
    ("cell", pa.uint64()), ("cls", pa.int8()), ("hll", pa.large_binary()),
    ("users", pa.int64()), ("ring_overlap", pa.int64()), ("locations", pa.int64()),
])
#: version of the batch table's columns, part of its settings metadata and cache tag
#: (2: ``ring_overlap`` in place of ``ring_users``, no rows for cells that are only a
#: neighbour)
BATCH_FORMAT = 2


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
    ucells, cid = cell_ids(lat, lon, resolution)
    return ucells[cid]


def cell_ids(lat: np.ndarray, lon: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """``(cells, index)``: the distinct H3 cells (sorted uint64) and each point's index into them.

    Each distinct coordinate pair is looked up once (aggregated location data
    repeat their coordinates), with ``h3ronpy``.
    """
    lat = np.ascontiguousarray(lat, dtype=np.float64)
    lon = np.ascontiguousarray(lon, dtype=np.float64)
    if not len(lat):
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    # any order that brings equal pairs together will do: sort by a mix of their bits (a
    # collision only splits a pair's run in two, which still gives each run its cell)
    mix = lat.view(np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ lon.view(np.uint64)
    order = np.argsort(mix)
    a, b = lat[order], lon[order]
    new = np.ones(len(a), bool)
    new[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    pair = np.empty(len(a), np.int64)
    pair[order] = np.cumsum(new) - 1
    cells = pa.array(h3v.coordinates_to_cells(a[new], b[new], resolution)).to_numpy()
    ucells, inv = _unique_inverse(cells)
    return ucells, inv.astype(np.int64)[pair]


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
    locations: pa.Table, classes: pa.Table, study_country_code: str, resolution: int, ring: int,
    parsed: ParsedColumn | None = None,
) -> pa.Table:
    """Per (cell, class) of one batch: union HLL, distinct users, k-ring overlap, rows.

    ``locations``: ``user_guid, latitude, longitude, country_code, userday_hll``;
    ``classes``: ``user_guid, classification`` of the batch's users. Only rows in
    the study country count. ``parsed``: ``userday_hll`` already parsed
    (``hll.parse_many``), not parsed again.

    The distinct users of a class in a cell's k-ring are the sum of the ring's
    cells' ``users`` less ``ring_overlap``: per user of the class, the number of
    the user's cells in that ring beyond the first. Both add up over batches (a
    user is in one batch), so the pooled counts stay exact while the table holds
    only cells with rows and the few neighbours where a user's cells overlap;
    those rows have a null ``hll`` and ``users`` 0.
    """
    # a row without an HLL (never from the reader) has no userday: it is no trace at all,
    # so it counts neither for the cell's users nor for the ring overlaps
    inside = pc.and_(pc.fill_null(pc.equal(locations.column("country_code"),
                                           pa.scalar(study_country_code)), False),
                     pc.is_valid(locations.column("userday_hll")))
    loc = locations.select(["user_guid", "latitude", "longitude"]).filter(inside)
    hlls = (locations.column("userday_hll").filter(inside) if parsed is None
            else parsed.take(np.flatnonzero(inside.to_numpy(zero_copy_only=False))))
    uidx = pc.index_in(loc.column("user_guid"), classes.column("user_guid")).to_numpy(
        zero_copy_only=False)
    if len(uidx) and np.isnan(np.asarray(uidx, dtype=float)).any():
        raise ValueError("a location's user has no classification")
    uidx = np.asarray(uidx, dtype=np.int64)
    ucls = class_codes(classes.column("classification"))
    cls = ucls[uidx]
    ucells, cid = cell_ids(loc.column("latitude").to_numpy(), loc.column("longitude").to_numpy(),
                           resolution)
    gkey, ginv, gcount = _small_groups(cid * 3 + cls, 3 * len(ucells))
    _, blobs = grouped_union_arrow(hlls, ginv, len(gkey))
    # distinct users per (cell, class): a user has one class; keys ``cell << b | user``
    b = max(1, int(len(ucls)).bit_length())
    user_mask = (1 << b) - 1
    pair = _sorted_unique((cid << b) | uidx)
    pc_cell, pc_user = pair >> b, pair & user_mask
    pc_cls = ucls[pc_user].astype(np.int64)
    users = np.bincount(np.searchsorted(gkey, pc_cell * 3 + pc_cls), minlength=len(gkey))
    ocells, okey, ocount = _ring_overlap(ucells, pc_cell, pc_user, pc_cls, ring, b)
    # one table keyed by (cell, class), sorted: own groups and overlap groups merged
    allcells = _sorted_unique(np.concatenate([ucells, ocells]))
    own_k = np.searchsorted(allcells, ucells[gkey // 3]) * 3 + gkey % 3
    ov_k = np.searchsorted(allcells, ocells[okey // 3]) * 3 + okey % 3
    rkey = _sorted_unique(np.concatenate([own_k, ov_k]))
    at = np.searchsorted(rkey, own_k)
    nr = len(rkey)
    hll_idx = np.full(nr, -1, np.int64)
    hll_idx[at] = np.arange(len(gkey))
    own_users = np.zeros(nr, np.int64)
    own_users[at] = users
    own_rows = np.zeros(nr, np.int64)
    own_rows[at] = gcount
    overlap = np.zeros(nr, np.int64)
    overlap[np.searchsorted(rkey, ov_k)] = ocount
    return pa.table({
        "cell": pa.array(allcells[rkey // 3], pa.uint64()),
        "cls": pa.array((rkey % 3).astype(np.int8)),
        "hll": blobs.take(pa.array(hll_idx, mask=hll_idx < 0)),
        "users": pa.array(own_users), "ring_overlap": pa.array(overlap),
        "locations": pa.array(own_rows),
    }, schema=BATCH_SCHEMA)


def _ring_overlap(ucells: np.ndarray, pc_cell: np.ndarray, pc_user: np.ndarray,
                  pc_cls: np.ndarray, ring: int, b: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(cells, keys, counts)``: per (ring cell, class) with a positive count, the number of
    times a user of the class has a further cell in that cell's k-ring (``keys`` =
    index into the sorted ``cells`` * 3 + class).

    ``pc_cell`` (index into ``ucells``), ``pc_user``, ``pc_cls``: the distinct
    (cell, user) pairs. Only users with two or more cells can be in a ring twice,
    so only their pairs are expanded to the cells whose ring holds them (the
    ring is symmetric); a key ``(ring cell * 3 + class) << b | user`` seen ``m``
    times adds ``m - 1``.
    """
    empty = np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    if ring == 0 or not len(pc_user):
        return empty
    multi = np.bincount(pc_user)[pc_user] >= 2
    if not multi.any():
        return empty
    m_cell, m_user, m_cls = pc_cell[multi], pc_user[multi], pc_cls[multi]
    used, m_cell = _unique_inverse(m_cell)  # the rings of these cells only
    center, nbr = _rings(ucells[used], ring)  # grouped by centre, in order
    lens = np.bincount(center, minlength=len(used))
    starts = np.cumsum(lens) - lens
    rep = lens[m_cell]
    base = np.repeat(starts[m_cell], rep) + _ranges_within(rep)
    tcells, tinv = _unique_inverse(nbr)
    key = np.sort(((tinv[base] * 3) << b) + np.repeat((m_cls << b) | m_user, rep))
    dup = key[1:][key[1:] == key[:-1]] >> b
    if not len(dup):
        return empty
    counts = np.bincount(dup, minlength=3 * len(tcells))
    okey = np.flatnonzero(counts)
    return tcells, okey, counts[okey]


def _small_groups(key: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(key, return_inverse=True, return_counts=True)`` for keys in ``[0, n)``,
    by counting (no sort)."""
    counts = np.bincount(key, minlength=n)
    present = np.flatnonzero(counts)
    rank = np.cumsum(counts > 0) - 1
    return present, rank[key], counts[present]


def _unique_inverse(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(a, return_inverse=True)`` by one argsort (int64 inverse)."""
    order = np.argsort(a, kind="stable")
    s = a[order]
    new = np.ones(len(s), bool)
    new[1:] = s[1:] != s[:-1]
    inv = np.empty(len(a), np.int64)
    inv[order] = np.cumsum(new) - 1
    return s[new], inv


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
    """Union rows of equal (cell, class): HLL union, counts summed (a user is in one batch).

    Only rows with an HLL take part in the union, and a group with one such row
    keeps it as it is (a union's result is its own union).
    """
    cell = t.column("cell").to_numpy()
    cls = t.column("cls").to_numpy().astype(np.int64)
    ucell, cinv = _unique_inverse(cell)
    gkey, ginv, _ = _small_groups(cinv.astype(np.int64) * 3 + cls, 3 * len(ucell))
    blobs = union_groups(t.column("hll"), ginv, len(gkey))

    def total(name: str) -> pa.Array:
        return pa.array(np.bincount(ginv, weights=t.column(name).to_numpy(),
                                    minlength=len(gkey)).astype(np.int64))

    return pa.table({
        "cell": pa.array(ucell[gkey // 3], pa.uint64()),
        "cls": pa.array((gkey % 3).astype(np.int8)),
        "hll": blobs,
        "users": total("users"), "ring_overlap": total("ring_overlap"),
        "locations": total("locations"),
    }, schema=BATCH_SCHEMA)


def union_groups(hlls: pa.Array | pa.ChunkedArray, groups: np.ndarray, n_groups: int) -> pa.Array:
    """Per group the union of its non-null HLLs (``hll_union_agg``; null: none), large_binary.

    The inputs are unions already (per-batch tables): a group with one HLL keeps
    its bytes, only groups with several are unioned by the engine.
    """
    if isinstance(hlls, pa.ChunkedArray):
        hlls = hlls.combine_chunks() if hlls.num_chunks else pa.array([], pa.large_binary())
    hlls = hlls.cast(pa.large_binary())
    valid = np.flatnonzero(not_null_mask(hlls))
    g = groups[valid]
    n = np.bincount(g, minlength=n_groups)
    pick = np.full(n_groups, -1, np.int64)
    single = n[g] == 1
    pick[g[single]] = valid[single]
    out = hlls.take(pa.array(pick, mask=pick < 0))
    multi = np.flatnonzero(~single)
    if not len(multi):
        return out
    mg, minv = _unique_inverse(g[multi])
    rows = valid[multi]
    # in slices of whole groups of about _UNION_BYTES each (a slice ends at the group that
    # crosses the bound): parsing HLLs for a union takes about 16x their bytes, so one
    # union of everything held would be the peak
    order = np.argsort(minv, kind="stable")
    rows, minv = rows[order], minv[order]
    _, off, _ = arrow_buffers(hlls)
    size = np.cumsum(off[rows + 1] - off[rows])
    first = np.searchsorted(minv, np.arange(len(mg)))  # each group's first row
    cut = np.unique(np.searchsorted(size[first], np.arange(0, size[-1], _UNION_BYTES)))
    cut = cut[cut < len(mg)]  # thresholds within the last group start no slice
    bounds = np.append(first[cut], len(rows)) if len(cut) else np.array([0, len(rows)])

    def union(a: int, b: int) -> pa.Array:
        g0 = minv[a]
        return grouped_union_arrow(hlls.take(pa.array(rows[a:b])), minv[a:b] - g0,
                                   int(minv[b - 1] - g0 + 1))[1]

    # two slices at a time: the engine's numpy work releases the GIL (it runs in the
    # combining step, alone in its run)
    with ThreadPoolExecutor(max_workers=2) as pool:
        blobs = pa.concat_arrays(list(pool.map(union, bounds[:-1], bounds[1:])))
    pos = np.arange(n_groups, dtype=np.int64)  # into out, or past it into the unions
    pos[mg] = n_groups + np.arange(len(mg))
    return pa.concat_arrays([out, blobs]).take(pa.array(pos))


def combine(tables: Iterable[pa.Table]) -> pa.Table:
    """Union batch tables per (cell, class); same bytes as one union over all rows.

    Cells with no HLL in any batch (rows only for a ring overlap as a neighbour of
    cells with rows) are left out: :func:`landscape_table` has one row per cell with
    rows and pools only those.
    """
    held: list[pa.Table] = []
    rows = held_bytes = reduced_bytes = 0
    for t in tables:
        held.append(t.select(BATCH_SCHEMA.names).cast(BATCH_SCHEMA))
        rows += t.num_rows
        held_bytes += held[-1].column("hll").nbytes
        # the byte bound doubles with the running union, so each byte is re-unioned a
        # bounded number of times
        if len(held) > 1 and (rows > _COMBINE_ROWS
                              or held_bytes > max(_COMBINE_BYTES, 2 * reduced_bytes)):
            held = [_reduce(pa.concat_tables(held))]
            rows = held[0].num_rows
            held_bytes = reduced_bytes = held[0].column("hll").nbytes
    if not held:
        return BATCH_SCHEMA.empty_table()
    t = pa.concat_tables(held)
    cell = t.column("cell").to_numpy()
    own = _sorted_unique(cell[not_null_mask(t.column("hll").combine_chunks())])
    at = np.minimum(np.searchsorted(own, cell), max(len(own) - 1, 0))
    keep = own[at] == cell if len(own) else np.zeros(len(cell), bool)
    return _reduce(t if keep.all() else t.filter(pa.array(keep)))


def _hex_column(blobs: pa.Array) -> pa.Array:
    """bytea hex text (``\\x..``) of a binary column, nulls kept (large_string).

    One ``binascii.hexlify`` of the whole data buffer and one Arrow kernel for the prefixes.
    """
    if isinstance(blobs, pa.ChunkedArray):
        blobs = blobs.combine_chunks() if blobs.num_chunks else pa.array([], pa.large_binary())
    arr = blobs.cast(pa.large_binary())
    data, off, valid = arrow_buffers(arr)
    validity = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little").tobytes())
    digits = pa.LargeStringArray.from_buffers(
        len(arr), pa.py_buffer(off * 2), pa.py_buffer(binascii.hexlify(data)), validity)
    return pc.binary_join_element_wise(pa.scalar("\\x", pa.large_string()), digits,
                                       pa.scalar("", pa.large_string()))


def _binom_functions():
    """``(pmf, cdf, sf)`` of the binomial distribution, the ones ``scipy.stats.binom`` uses.

    ``scipy.stats.binom`` evaluates Boost's binomial through ``scipy.special``'s
    private ufuncs ``_binom_pmf``/``_binom_cdf``/``_binom_sf``; calling them here
    (with its support handling: 0 outside ``[0, n]``, the cdf 0 below and 1 from
    ``n`` on) gives the same numbers without importing ``scipy.stats``, which
    costs 0.6-1.1 s per process against 0.15 s for ``scipy.special``. Where a
    scipy release drops them, ``scipy.stats.binom`` is the fallback (the tests
    check both agree bit for bit).
    """
    try:
        from scipy.special._ufuncs import _binom_cdf, _binom_pmf, _binom_sf
    except ImportError:  # pragma: no cover - another scipy layout
        from scipy.stats import binom

        return binom.pmf, binom.cdf, binom.sf

    def pmf(x, n, p):
        x = np.asarray(x, np.float64)
        inside = (x >= 0) & (x <= n)
        return np.where(inside, _binom_pmf(np.clip(x, 0, n), n, p), 0.0)

    def cdf(x, n, p):
        x = np.floor(np.asarray(x, np.float64))
        return np.where(x < 0, 0.0, np.where(x >= n, 1.0, _binom_cdf(np.clip(x, 0, n), n, p)))

    def sf(x, n, p):
        x = np.floor(np.asarray(x, np.float64))
        return np.where(x < 0, 1.0, np.where(x >= n, 0.0, _binom_sf(np.clip(x, 0, n), n, p)))

    return pmf, cdf, sf


def binom_two_sided(k: np.ndarray, n: np.ndarray, p: float) -> np.ndarray:
    """``scipy.stats.binomtest(k, n, p).pvalue`` (two-sided) for arrays, vectorised.

    The same algorithm as scipy's (likelihood ordering with relative tolerance
    1e-7, binary search for the other tail), run on all cells at once, on the
    same Boost functions (:func:`_binom_functions`).
    """
    pmf, cdf, sf = _binom_functions()
    k = np.asarray(k, np.int64)
    n = np.asarray(n, np.int64)
    pv = np.ones(len(k))
    d = pmf(k, n, p)
    rerr = 1 + 1e-7
    pn = p * n
    low = k < pn
    if low.any():
        nl, kl, dl = n[low], k[low], d[low]
        ix = _bsearch(lambda x, i: -pmf(x, nl[i], p), -dl * rerr,
                      np.ceil(p * nl).astype(np.int64), nl.copy())
        y = nl - ix + (dl * rerr == pmf(ix, nl, p)).astype(np.int64)
        pv[low] = cdf(kl, nl, p) + sf(nl - y, nl, p)
    high = k > pn
    if high.any():
        nh, kh, dh = n[high], k[high], d[high]
        ix = _bsearch(lambda x, i: pmf(x, nh[i], p), dh * rerr,
                      np.zeros(len(nh), np.int64), np.floor(p * nh).astype(np.int64))
        y = ix + 1
        pv[high] = cdf(y - 1, nh, p) + sf(kh - 1, nh, p)
    return np.minimum(pv, 1.0)


def by_q_values(p: np.ndarray) -> np.ndarray:
    """Benjamini-Yekutieli adjusted p-values, as ``scipy.stats.false_discovery_control(p,
    method="by")`` computes them (the same operations in the same order), without
    importing ``scipy.stats`` (see :func:`_binom_functions`)."""
    p = np.asarray(p, np.float64)
    m = len(p)
    if not m:
        return p.copy()
    order = np.argsort(p)
    ps = p[order]
    i = np.arange(1, m + 1, dtype=np.float64)
    ps *= m / i
    ps *= np.sum(1 / i)
    np.minimum.accumulate(ps[::-1], out=ps[::-1])
    q = np.empty(m)
    q[order] = ps
    return np.clip(q, 0.0, 1.0)


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
    cells = _sorted_unique(own.column("cell").to_numpy())
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

    def estimates(c: int) -> tuple[pa.Array, np.ndarray, np.ndarray | None]:
        """The class's own HLL per cell, its estimate and the ring-pooled estimate."""
        rows = np.flatnonzero(present & (cls_all == c))
        blobs = pa.nulls(nc, pa.large_binary())
        if len(rows):
            idx = np.full(nc, -1, np.int64)
            idx[ccell[rows]] = rows
            blobs = hll_all.take(pa.array(idx, mask=idx < 0))
            if isinstance(blobs, pa.ChunkedArray):
                blobs = blobs.combine_chunks()
        card = grouped_cardinality(blobs, np.arange(nc), nc)
        pcard = (grouped_cardinality(blobs.take(pa.array(npos)), center, nc)
                 if _PREFIX[c] != "undetermined" else None)
        return blobs, card, pcard

    # the classes in threads: the engine's numpy work releases the GIL
    with ThreadPoolExecutor(max_workers=len(_PREFIX)) as pool:
        per_class = list(pool.map(estimates, range(len(_PREFIX))))
    for c, name in enumerate(_PREFIX):
        blobs, card, pcard = per_class[c]
        rows = np.flatnonzero(present & (cls_all == c))
        at = ccell[rows]
        cols[f"{name}_userdays"] = pa.array(np.nan_to_num(card, nan=0.0))

        def per_cell(col: str, rows=rows, at=at) -> np.ndarray:
            v = np.zeros(nc, np.int64)
            v[at] = combined.column(col).to_numpy()[rows]
            return v

        cols[f"{name}_users"] = pa.array(per_cell("users"))
        cols[f"{name}_hll"] = _hex_column(blobs)
        # distinct users in the ring: the ring's cells' users less the users' repeats
        own_users = per_cell("users")
        pooled[f"{name}_users"] = (np.bincount(center, weights=own_users[npos], minlength=nc)
                                   .astype(np.int64) - per_cell("ring_overlap"))
        if pcard is not None:
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
        q[tested] = by_q_values(p[tested])
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

    return shapely.from_wkb(np.asarray(cell_wkb(cells).to_pylist(), dtype=object))


def cell_wkb(cells: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Hexagon polygons (WKB, EPSG:4326) of H3 index strings, as a binary array."""
    if isinstance(cells, pa.ChunkedArray):
        cells = cells.combine_chunks()
    ids = pa.array(h3ronpy.cells_parse(cells.cast(pa.string())))
    return pa.array(h3v.cells_to_wkb_polygons(ids)).cast(pa.binary())


# ----------------------------------------------------------------- in the batch worker
@dataclass(frozen=True)
class BatchLandscapeSpec:
    """What a batch's landscape tables depend on: the classes' settings, cells, layers.

    The batch worker computes the tables from the rows it has in memory when
    it knows these settings (the classification's, as the batch step sees them);
    ``landscape_batch_cells`` uses them only when its own settings (read from
    ``user_classification``) give the same :meth:`tag`, else it computes them.
    ``layers`` are ``NAME=SPEC`` strings of the region layers with per-class unions.
    """

    study_country_code: str
    resolution: int = 8
    ring: int = 1
    min_userdays: float = 0.0
    min_share: float = 0.0
    min_margin: float = 0.0
    study_region: str = ""
    layers: tuple[str, ...] = ()

    @classmethod
    def of(cls, info, params: LandscapeParams, layers: Iterable[str] = ()) -> BatchLandscapeSpec:
        """From a classification's provenance ``RunInfo`` and the landscape parameters."""
        return cls(info.study_country_code, params.resolution, params.ring,
                   float(info.min_userdays), float(info.min_share), float(info.min_margin),
                   info.study_region, tuple(str(s) for s in layers))

    def tag(self, kind: str = "cells") -> str:
        """Short hash of every setting the table ``kind`` (``cells`` or a layer name) depends on."""
        import hashlib
        import json

        d = {"code": self.study_country_code, "min_userdays": self.min_userdays,
             "min_share": self.min_share, "min_margin": self.min_margin,
             "study_region": self.study_region, "kind": kind}
        if kind == "cells":
            d.update(resolution=self.resolution, ring=self.ring, format=BATCH_FORMAT)
        else:
            d["layer"] = next(s for s in self.layers if s.split("=", 1)[0] == kind)
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def classes(self, homes: pa.Table, hll_log2m: int = 11, hll_explicit_max: int = 160,
                region_homes: pa.Table | None = None) -> pa.Table:
        """The batch's ``user_guid, classification`` as ``user_classification`` makes them."""
        from homeloc_assets.inference.rules import classify_batch
        from homeloc_assets.provenance import RunInfo

        info = RunInfo(study_country="", study_country_code=self.study_country_code,
                       min_userdays=self.min_userdays, max_reject_share=1.0, batch_users=0,
                       min_share=self.min_share, min_margin=self.min_margin,
                       study_region=self.study_region, hll_log2m=hll_log2m,
                       hll_explicit_max=hll_explicit_max)
        return classify_batch(homes, info, region_homes=region_homes).select(
            ["user_guid", "classification"])


#: columns of the batch tables written without Parquet dictionary encoding: nearly every
#: value distinct (building their dictionaries took 40 % of writing a cells table)
NO_DICTIONARY = ("cell", "hll")

REGION_BATCH_SCHEMA = pa.schema([
    ("region_code", pa.string()), ("region", pa.string()), ("cls", pa.int8()),
    ("hll", pa.large_binary()), ("users", pa.int64()), ("locations", pa.int64()),
])


def batch_regions(user_guid: pa.Array, hlls: pa.Array | ParsedColumn, region_index: np.ndarray,
                  names: np.ndarray, codes: np.ndarray, classes: pa.Table) -> pa.Table:
    """Per (region, class) of one batch and one region layer: union HLL, distinct users, rows.

    ``region_index`` of each row into ``names``/``codes`` (-1: in no region of the
    layer; such rows take no part). Every point in a region of the layer counts,
    inside the study country or not. Sorted by region code, then class. ``hlls``
    may be parsed already (``hll.parse_many``).
    """
    ridx = np.asarray(region_index, np.int64)
    rows = np.flatnonzero(ridx >= 0)
    if not len(rows):
        return REGION_BATCH_SCHEMA.empty_table()
    guid = pc.take(user_guid, pa.array(rows))
    uidx = pc.index_in(guid, classes.column("user_guid")).to_numpy(zero_copy_only=False)
    if np.isnan(np.asarray(uidx, dtype=float)).any():
        raise ValueError("a location's user has no classification")
    uidx = np.asarray(uidx, dtype=np.int64)
    ucls = class_codes(classes.column("classification"))
    # regions by code (the final order), distinct codes only
    code_arr = pa.array(np.asarray(codes, dtype=object)[ridx[rows]], pa.string())
    ucodes = pc.unique(code_arr)
    ucodes = ucodes.take(pc.sort_indices(ucodes))
    rid = np.asarray(pc.index_in(code_arr, ucodes).to_numpy(zero_copy_only=False), np.int64)
    first = np.full(len(ucodes), -1, np.int64)
    first[rid[::-1]] = np.arange(len(rid))[::-1]
    rnames = pa.array(np.asarray(names, dtype=object)[ridx[rows][first]], pa.string())
    gkey, ginv, gcount = _small_groups(rid * 3 + ucls[uidx], 3 * len(ucodes))
    taken = hlls.take(rows) if isinstance(hlls, ParsedColumn) else pc.take(hlls, pa.array(rows))
    _, blobs = grouped_union_arrow(taken, ginv, len(gkey))
    pair = _sorted_unique(rid * (len(ucls) + 1) + uidx)
    p_reg, p_user = pair // (len(ucls) + 1), pair % (len(ucls) + 1)
    users = np.bincount(np.searchsorted(gkey, p_reg * 3 + ucls[p_user]), minlength=len(gkey))
    g_reg = pa.array(gkey // 3)
    return pa.table({
        "region_code": ucodes.take(g_reg), "region": rnames.take(g_reg),
        "cls": pa.array((gkey % 3).astype(np.int8)),
        "hll": blobs,
        "users": pa.array(users.astype(np.int64)), "locations": pa.array(gcount.astype(np.int64)),
    }, schema=REGION_BATCH_SCHEMA)


def combine_regions(tables: Iterable[pa.Table]) -> pa.Table:
    """Union per-batch region tables per (region, class); same bytes as one union over all rows."""
    ts = [t.select(REGION_BATCH_SCHEMA.names).cast(REGION_BATCH_SCHEMA) for t in tables]
    if not ts:
        return REGION_BATCH_SCHEMA.empty_table()
    t = pa.concat_tables(ts).combine_chunks()
    if not t.num_rows:
        return REGION_BATCH_SCHEMA.empty_table()
    codes = t.column("region_code")
    ucodes = pc.unique(codes)
    ucodes = ucodes.take(pc.sort_indices(ucodes))
    rid = np.asarray(pc.index_in(codes, ucodes).to_numpy(zero_copy_only=False), np.int64)
    cls = t.column("cls").to_numpy().astype(np.int64)
    gkey, ginv, _ = _small_groups(rid * 3 + cls, 3 * len(ucodes))
    first = np.full(len(gkey), -1, np.int64)
    first[ginv[::-1]] = np.arange(len(ginv))[::-1]

    def total(name: str) -> pa.Array:
        return pa.array(np.bincount(ginv, weights=t.column(name).to_numpy(),
                                    minlength=len(gkey)).astype(np.int64))

    return pa.table({
        "region_code": ucodes.take(pa.array(gkey // 3)),
        "region": t.column("region").take(pa.array(first)),
        "cls": pa.array((gkey % 3).astype(np.int8)),
        "hll": union_groups(t.column("hll"), ginv, len(gkey)),
        "users": total("users"), "locations": total("locations"),
    }, schema=REGION_BATCH_SCHEMA)


def region_table(combined: pa.Table) -> pa.Table:
    """One row per region with points: per class userdays, users and the union HLL (hex).

    ``<class>_userdays`` = ``hll_cardinality`` of the union (0 without points),
    ``<class>_users`` distinct users, ``<class>_hll`` bytea hex (null without
    points), ``locations`` rows, ``tourist_share`` = tourist / (local + tourist)
    userdays (null without classified userdays).
    """
    codes = combined.column("region_code").combine_chunks()
    ucodes = pc.unique(codes)
    ucodes = ucodes.take(pc.sort_indices(ucodes))
    nr = len(ucodes)
    rid = np.asarray(pc.index_in(codes, ucodes).to_numpy(zero_copy_only=False), np.int64)
    first = np.full(nr, -1, np.int64)
    first[rid[::-1]] = np.arange(len(rid))[::-1]
    cls = combined.column("cls").to_numpy()
    hll = combined.column("hll").combine_chunks()
    cols: dict[str, pa.Array] = {
        "region_code": ucodes,
        "region": combined.column("region").combine_chunks().take(pa.array(first)),
    }
    locs = np.bincount(rid, weights=combined.column("locations").to_numpy(), minlength=nr)
    for c, name in enumerate(_PREFIX):
        rows = np.flatnonzero(cls == c)
        idx = np.full(nr, -1, np.int64)
        idx[rid[rows]] = rows
        blobs = hll.take(pa.array(idx, mask=idx < 0))
        card = np.zeros(nr)
        if len(rows):
            card[rid[rows]] = np.nan_to_num(grouped_cardinality(hll.take(pa.array(rows)),
                                                                np.arange(len(rows))), nan=0.0)
        users = np.zeros(nr, np.int64)
        users[rid[rows]] = combined.column("users").to_numpy()[rows]
        cols[f"{name}_userdays"] = pa.array(card)
        cols[f"{name}_users"] = pa.array(users)
        cols[f"{name}_hll"] = _hex_column(blobs)
    cols["locations"] = pa.array(locs.astype(np.int64))
    lo, to = np.asarray(cols["local_userdays"]), np.asarray(cols["tourist_userdays"])
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(lo + to > 0, to / (lo + to), np.nan)
    cols["tourist_share"] = pa.array(share, mask=~(lo + to > 0))
    return pa.table(cols)


#: schema metadata of a batch cells table: ``format,resolution,ring,study country code``
PARAMS_KEY = b"homeloc.landscape"


def batch_params(resolution: int, ring: int, study_country_code: str) -> bytes:
    """The :data:`PARAMS_KEY` value of a batch cells table made with these settings (and
    this :data:`BATCH_FORMAT`): a table with another value must be made again."""
    return f"v{BATCH_FORMAT},{resolution},{ring},{study_country_code}".encode()


def batch_tables(result, spec: BatchLandscapeSpec, hll_params: int | None = None
                 ) -> dict[str, pa.Table]:
    """The landscape tables of one processed batch (``inference.batch.BatchResult``), from its
    rows in memory: ``"cells"`` (:func:`batch_cells`) and one per layer of ``spec.layers``
    (:func:`batch_regions`), keyed by layer name. ``hll_params``: the file's params code."""
    from homeloc_assets.geo.layers import layer_assets
    from homeloc_assets.hll._vector import params_of_code

    log2m, explicit_max = 11, 160
    if hll_params is not None:
        p = params_of_code(hll_params)
        log2m, explicit_max = p.log2m, p.effective_expthresh
    region_homes = None
    if spec.study_region:
        layer = spec.study_region.partition("=")[0]
        region_homes = result.layer_tables[layer_assets(layer)[1]].select(
            ["user_guid", "region_code"])
    classes = spec.classes(result.homes, log2m, explicit_max, region_homes)
    loc = result.locations
    parsed = result.parsed_hll  # the reader's parse of the rows' HLLs (None: parse here)
    cells = batch_cells(loc, classes, spec.study_country_code, spec.resolution, spec.ring, parsed)
    meta = batch_params(spec.resolution, spec.ring, spec.study_country_code)
    out = {"cells": cells.replace_schema_metadata({PARAMS_KEY: meta})}
    guid = loc.column("user_guid").combine_chunks()
    hlls = loc.column("userday_hll").combine_chunks() if parsed is None else parsed
    for text in spec.layers:
        name = text.split("=", 1)[0]
        located = result.layer_located[name]
        out[name] = batch_regions(guid, hlls, located.index, located.names, located.codes, classes)
    return out
