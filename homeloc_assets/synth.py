"""Synthetic seed-format input with known truth: :func:`generate` and the ``homeloc synth`` CLI.

This module owns the synthetic data generator. It writes a CSV in the seed's
format (``user_guid,latitude,longitude,userday_hll``, sorted by
``user_guid``) where every ``userday_hll`` is a real postgresql-hll value
(log2m=11, regwidth=5, expthresh=-1, sparseon=1) of the days the user was
active at that location, hashed with ``hll_hash_bigint`` exactly as
PostgreSQL does, plus ``<out>.truth.csv`` with the home country each user was
built with.

How the data is built (all vectorised with numpy, chunk by chunk):

* user ids: random 128-bit numbers, sorted, as 32 lowercase hex chars;
* each user gets a home country (``local_share`` of them the study country,
  the rest tourists from a realistic origin mix: neighbours and big source
  countries weigh more), a heavy-tailed number of locations (discrete
  lognormal, capped at ``max_rows``), and an active period within
  ``n_days`` days after 2000-01-01;
* locations are grid points (``grid_step`` degrees, printed with
  ``decimals`` decimals) drawn from per-country pools of points that were
  tested once to lie strictly inside that country;
* home locations get days spread over the active period (a few "heavy"
  locations get hundreds or thousands of days and so SPARSE or FULL HLLs);
  locations abroad get days inside one trip window per (user, country);
* the truth holds by construction: the first home location of a user who
  travels contains a streak of ``2 * trip_length + 1`` consecutive days, so
  the home country has more than twice the distinct days of any other
  country (safe against the HLL estimate error above 160 values).

Shapes (``--shape``, :data:`SHAPES`): ``default`` as above; ``seed``, the
real data's shape: 43-character base64 HMAC-SHA256-like ids (mixed case,
``+``, ``/``), values of ``hll_set_defaults(11, 5, 0, 1)`` (no EXPLICIT,
SPARSE from the first element: ``\\x138b40…``) whose elements are
``hll_hash_text`` of :func:`userday_text` (Murmur3-128 hex of
``"user_guid:YYYY-MM-DD"``; one hash per user and day, shared by all of the
user's locations that day), a 0.05° grid and a heavier tail of locations per
user; ``heavy``, power users: about 17 % SPARSE and 8 % FULL values at the
default parameters. ``--params`` sets the header and storage types for other
expthresh/sparseon values (log2m 11 and regwidth 5 only).

EXPLICIT values (most rows) are encoded as header ``12 8b 7f`` followed by the
hashes as big-endian int64 sorted by signed value; the hex text of all rows is
produced with lookup tables on uint8 views. Rows with more than 160 distinct
hashes get their registers computed with numpy and are packed as SPARSE
(``13 8b 7f``, 16-bit index/value chunks) or FULL (``14 8b 7f``, 2048 5-bit
registers) exactly as PostgreSQL packs them.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from homeloc_assets.hll._hex import hex_ascii
from homeloc_assets.hll._ops import rho_and_index

__all__ = [
    "SHAPES",
    "SynthSummary",
    "generate",
    "params_bytes",
    "shape_kwargs",
    "synth_main",
    "truth_path_for",
    "userday_text",
]

# postgresql-hll storage at the default parameters.
LOG2M = 11
REGWIDTH = 5
NREGS = 1 << LOG2M
EXPLICIT_MAX = 160  # expthresh=-1: (2048 * 5 / 8) bytes / 8 bytes per value
FULL_BYTES = NREGS * REGWIDTH // 8  # 1280
TYPE_EXPLICIT, TYPE_SPARSE, TYPE_FULL = 0x12, 0x13, 0x14
PARAM_BYTE = ((REGWIDTH - 1) << 5) | LOG2M  # 0x8b
CUTOFF_BYTE = 0x40 | 0x3F  # sparseon=1, expthresh=-1 ("auto")
HLL_TYPE_NAMES = {TYPE_EXPLICIT: "explicit", TYPE_SPARSE: "sparse", TYPE_FULL: "full"}

HEADER = "user_guid,latitude,longitude,userday_hll"
TRUTH_HEADER = "user_guid,home_country,home_country_code,classification"
LOCAL, TOURIST = "Local", "Tourist"

#: Relative weights of tourists' origin countries and of travel destinations
#: (Natural Earth ADMIN names). Countries touching the study country get at
#: least ``NEIGHBOUR_WEIGHT``; all other inhabited countries ``OTHER_WEIGHT``.
POPULAR_WEIGHTS: dict[str, float] = {
    "Netherlands": 10,
    "United States of America": 9,
    "Switzerland": 8,
    "Austria": 8,
    "United Kingdom": 8,
    "France": 7,
    "Italy": 7,
    "Spain": 6,
    "Poland": 6,
    "Denmark": 5,
    "Belgium": 5,
    "Czechia": 4,
    "Turkey": 4,
    "Sweden": 3,
    "China": 3,
    "Russia": 3,
    "Greece": 3,
    "Croatia": 3,
    "Portugal": 3,
    "Norway": 2,
    "Japan": 2,
    "Luxembourg": 2,
    "Ukraine": 1.5,
    "Hungary": 1.5,
    "Romania": 1.5,
    "Finland": 1.5,
    "Canada": 1.5,
    "Australia": 1.5,
    "Brazil": 1.5,
    "India": 1.5,
    "Ireland": 1.2,
    "Israel": 1,
    "South Korea": 1,
    "Mexico": 1,
    "Thailand": 1,
    "Egypt": 1,
    "Slovakia": 1,
    "Slovenia": 1,
}
NEIGHBOUR_WEIGHT = 6.0
OTHER_WEIGHT = 0.08
#: Never a home or a destination (uninhabited or not a travel destination).
UNINHABITED = frozenset(
    {
        "Antarctica",
        "Bir Tawil",
        "Heard Island and McDonald Islands",
        "Clipperton Island",
        "French Southern and Antarctic Lands",
        "Spratly Islands",
        "Scarborough Reef",
        "Coral Sea Islands",
        "Ashmore and Cartier Islands",
        "Brazilian Island",
        "South Georgia and the Islands",
        "United States Minor Outlying Islands",
        "British Indian Ocean Territory",
        "Indian Ocean Territories",
    }
)

_NDAY_BITS = 13  # day ranks are packed into keys with 13 bits: n_days <= 8192


def truth_path_for(out_path: str | Path) -> Path:
    """Where :func:`generate` writes the truth for ``out_path``: ``<out>.truth.csv``."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".truth.csv")


@dataclass
class SynthSummary:
    """What :func:`generate` wrote."""

    out_path: Path
    truth_path: Path
    n_users: int
    n_rows: int
    n_locals: int
    n_tourists: int
    study_country: str
    seed: int
    bytes_written: int
    seconds: float
    hll_types: dict[str, int] = field(default_factory=dict)
    max_rows_per_user: int = 0

    def describe(self) -> str:
        """One human-readable line."""
        types = ", ".join(f"{k} {v:,}" for k, v in self.hll_types.items())
        return (
            f"{self.n_users:,} users ({self.n_locals:,} locals of {self.study_country}, "
            f"{self.n_tourists:,} tourists), {self.n_rows:,} rows "
            f"(max {self.max_rows_per_user}/user; HLL {types}), "
            f"{self.bytes_written / 1e6:,.1f} MB in {self.seconds:.1f} s -> {self.out_path}"
        )


def _string_array(data: np.ndarray, offsets: np.ndarray) -> pa.Array:
    """A pyarrow large_string array over a flat uint8 buffer and int64 offsets (no copy)."""
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    return pa.Array.from_buffers(
        pa.large_string(),
        len(offsets) - 1,
        [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(data, dtype=np.uint8))],
    )


def _format_fixed(units: np.ndarray, decimals: int) -> pa.Array:
    """Integers in units of 10**-decimals as fixed-point decimal strings ("-12.30")."""
    units = np.asarray(units, dtype=np.int64)
    scale = 10**decimals
    mag = np.abs(units)
    whole = pc.cast(pa.array(mag // scale), pa.string())
    sign = pc.if_else(pa.array(units < 0), "-", "")
    head = pc.binary_join_element_wise(sign, whole, "")
    if decimals == 0:
        return head
    frac = pc.utf8_lpad(pc.cast(pa.array(mag % scale), pa.string()), decimals, "0")
    return pc.binary_join_element_wise(head, frac, ".")


# ---------------------------------------------------------------- HLL helpers
def _day_hashes(n_days: int) -> tuple[np.ndarray, np.ndarray]:
    """``hll_hash_bigint(day)`` for day 0..n_days-1, sorted by signed value, and each day's rank."""
    from homeloc_assets import hll

    h = np.array([hll.hash_bigint(d) for d in range(n_days)], dtype=np.int64)
    order = np.argsort(h, kind="stable")
    rank = np.empty(n_days, dtype=np.int64)
    rank[order] = np.arange(n_days)
    return h[order], rank


def register_values(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(register index, value) of each hashed value, as postgresql-hll computes them (11, 5)."""
    return rho_and_index(np.asarray(hashes, dtype=np.int64), LOG2M, REGWIDTH)


def registers_from_hashes(row: np.ndarray, hashes: np.ndarray, n_rows: int) -> np.ndarray:
    """Dense HLL registers (n_rows, 2048) uint8 of the hashed values grouped by ``row``."""
    idx, p = register_values(hashes)
    regs = np.zeros((n_rows, NREGS), dtype=np.uint8)
    np.maximum.at(regs, (np.asarray(row, dtype=np.int64), idx), p)
    return regs


def filled_registers(
    row: np.ndarray, hashes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-zero registers as triplets (row, index, value), sorted by (row, index).

    The sparse counterpart of :func:`registers_from_hashes`: memory grows with
    the number of values, not with rows x 2048.
    """
    idx, p = register_values(hashes)
    key = (((np.asarray(row, dtype=np.int64) << LOG2M) | idx) << 5) | p
    key = np.sort(key[p > 0])
    last = np.ones(len(key), dtype=bool)
    last[:-1] = (key[1:] >> 5) != (key[:-1] >> 5)  # the max value per (row, index) sorts last
    key = key[last]
    return key >> (LOG2M + 5), (key >> 5) & (NREGS - 1), (key & 31).astype(np.uint8)


def sparse_or_full(regs: np.ndarray) -> np.ndarray:
    """Storage type PostgreSQL packs registers into: SPARSE while it is smaller than FULL."""
    filled = np.count_nonzero(regs, axis=1)
    sparse_bytes = (filled * (LOG2M + REGWIDTH) + 7) // 8
    return np.where(sparse_bytes < FULL_BYTES, TYPE_SPARSE, TYPE_FULL).astype(np.uint8)


def pack_full(regs: np.ndarray) -> np.ndarray:
    """FULL payloads (n, 1280): the 2048 5-bit registers, big-endian bit order."""
    bits = np.unpackbits(regs[:, :, None], axis=2)[:, :, 8 - REGWIDTH :]
    return np.packbits(bits.reshape(len(regs), NREGS * REGWIDTH), axis=1)


def pack_sparse(regs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SPARSE payloads of all rows of ``regs``: (row of each 2-byte chunk, chunks (n, 2) uint8).

    Each filled register is a 16-bit chunk ``index << 5 | value``, ascending by index.
    """
    r, i = np.nonzero(regs)
    chunk = ((i.astype(np.uint16) << REGWIDTH) | regs[r, i].astype(np.uint16)).astype(">u2")
    return r, chunk.view(np.uint8).reshape(-1, 2)


# ---------------------------------------------------------------- countries
@dataclass
class _World:
    names: list[str]
    codes: list[str]
    study: int
    # grid-point pools, grouped by country
    pool_lat: pa.Array  # formatted strings
    pool_lon: pa.Array
    pool_start: np.ndarray  # per country
    pool_size: np.ndarray
    origin_p: np.ndarray  # probability of each country as a tourist's home
    dest_p: np.ndarray  # probability of each country as a local's destination


def _pool_points(
    geom, bounds: np.ndarray, target: int, step_units: int, decimals: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``target`` distinct grid points strictly inside ``geom`` (lat, lon in units)."""
    import shapely

    scale = 10**decimals
    minx, miny, maxx, maxy = bounds
    gx0, gx1 = int(np.floor(minx * scale / step_units)), int(np.ceil(maxx * scale / step_units))
    gy0, gy1 = int(np.floor(miny * scale / step_units)), int(np.ceil(maxy * scale / step_units))
    nx, ny = gx1 - gx0 + 1, gy1 - gy0 + 1
    shapely.prepare(geom)
    if nx * ny <= 300_000:  # small country: test every grid point of the box
        gx, gy = np.meshgrid(np.arange(gx0, gx1 + 1), np.arange(gy0, gy1 + 1))
        gx, gy = gx.ravel(), gy.ravel()
    else:
        box_area = (maxx - minx) * (maxy - miny)
        rate = max(geom.area / box_area, 1e-3) if box_area > 0 else 1.0
        m = int(min(max(target / rate * 1.5, 2000), 1_500_000))
        gx = rng.integers(gx0, gx1 + 1, m)
        gy = rng.integers(gy0, gy1 + 1, m)
    lon_u, lat_u = gx.astype(np.int64) * step_units, gy.astype(np.int64) * step_units
    inside = shapely.contains_xy(geom, lon_u / scale, lat_u / scale)
    key = np.unique(lat_u[inside] * (400 * scale) + lon_u[inside])
    rng.shuffle(key)
    key = key[:target]
    lat_u = np.floor_divide(key + 200 * scale, 400 * scale)
    lon_u = key - lat_u * (400 * scale)
    return lat_u, lon_u


def _build_world(
    countries,
    study_country: str,
    rng: np.random.Generator,
    grid_step: float,
    decimals: int,
    pool_size: int,
    study_pool_size: int,
) -> _World:
    """Country names, codes, point pools and origin/destination weights."""
    import shapely

    from homeloc_assets.geo.countries import resolve_country

    study_name, _ = resolve_country(countries, study_country)
    names = [str(n) for n in countries["country"]]
    codes = [str(c) for c in countries["country_code"]]
    study = names.index(study_name)
    geoms = np.asarray(countries.geometry.array, dtype=object)
    bounds = shapely.bounds(geoms)
    step_units = round(grid_step * 10**decimals)
    if step_units < 1 or abs(step_units - grid_step * 10**decimals) > 1e-6:
        raise ValueError(f"grid_step {grid_step} is not a multiple of 10**-{decimals}")

    lats, lons, sizes = [], [], np.zeros(len(names), dtype=np.int64)
    for i, name in enumerate(names):
        if name in UNINHABITED and i != study:
            lats.append(np.zeros(0, np.int64))
            lons.append(np.zeros(0, np.int64))
            continue
        target = study_pool_size if i == study else pool_size
        la, lo = _pool_points(geoms[i], bounds[i], target, step_units, decimals, rng)
        lats.append(la)
        lons.append(lo)
        sizes[i] = len(la)
    if sizes[study] == 0:
        raise ValueError(f"no grid point of step {grid_step} lies inside {study_name}")
    lat_u, lon_u = np.concatenate(lats), np.concatenate(lons)
    # Drop points another (lower-index, overlapping) country would claim: the
    # pipeline assigns a point to the lowest index whose polygon contains it.
    owner = np.repeat(np.arange(len(names)), sizes)
    scale = 10**decimals
    x, y = lon_u / scale, lat_u / scale
    pi, gi = shapely.STRtree(geoms).query(shapely.points(x, y))  # bounding boxes only
    lower = gi < owner[pi]
    pi, gi = pi[lower], gi[lower]
    claimed = pi[shapely.contains_xy(geoms[gi], x[pi], y[pi])]
    ok = np.ones(len(owner), dtype=bool)
    ok[claimed] = False
    lat_u, lon_u, owner = lat_u[ok], lon_u[ok], owner[ok]
    sizes = np.bincount(owner, minlength=len(names)).astype(np.int64)
    start = np.concatenate([[0], np.cumsum(sizes)[:-1]])

    # Weights: popular countries, neighbours of the study country, the rest.
    weights = np.full(len(names), OTHER_WEIGHT)
    for i, n in enumerate(names):
        weights[i] = POPULAR_WEIGHTS.get(n, OTHER_WEIGHT)
    touching = shapely.intersects(geoms, shapely.buffer(geoms[study], 0.01))
    weights = np.where(touching, np.maximum(weights, NEIGHBOUR_WEIGHT), weights)
    weights[sizes == 0] = 0.0
    weights[study] = 0.0
    if weights.sum() <= 0:
        raise ValueError("no country other than the study country has grid points")
    origin_p = weights / weights.sum()
    return _World(
        names=names,
        codes=codes,
        study=study,
        pool_lat=_format_fixed(lat_u, decimals),
        pool_lon=_format_fixed(lon_u, decimals),
        pool_start=start.astype(np.int64),
        pool_size=sizes,
        origin_p=origin_p,
        dest_p=origin_p,
    )


# ---------------------------------------------------------------- one chunk
@dataclass
class _Params:
    local_share: float
    rows_mu: float
    rows_sigma: float
    max_rows: int
    days_mu: float
    days_sigma: float
    heavy_share: float
    n_days: int
    local_travel_share: float
    explicit_max: int
    sparse: bool = True
    cutoff_byte: int = CUTOFF_BYTE
    heavy_days_median: float = 400.0
    heavy_days_sigma: float = 0.9
    heavy_days_min: int = 100
    userday_text: bool = False
    day_text: tuple[str, ...] = ()


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an int64 array (sort + mask; numpy 2's hash-based unique is slower)."""
    a = np.sort(a)
    if len(a) > 1:
        a = a[np.concatenate([[True], a[1:] != a[:-1]])]
    return a


def _choice(rng: np.random.Generator, p: np.ndarray, n: int) -> np.ndarray:
    """n draws of indices with probabilities p (vectorised inverse CDF)."""
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    return np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(p) - 1)


def _chunk(
    rng: np.random.Generator,
    guid_hex: np.ndarray,
    world: _World,
    prm: _Params,
    day_hash: np.ndarray,
    day_rank: np.ndarray,
    elements: list | None = None,
) -> tuple[pa.Table, pa.Table, dict[str, int], int]:
    """Rows and truth of the users whose ids are ``guid_hex`` (U, width) uint8 (ASCII).

    With ``prm.userday_text`` the elements are ``hll_hash_text`` of
    :func:`userday_text` (one hash per distinct (user, day)) instead of
    ``hll_hash_bigint(day)``. Returns also, when ``elements`` is a list, one
    (row, day) array pair appended to it (for the tests' PostgreSQL check).
    """
    n_users, id_width = guid_hex.shape
    study = world.study
    n_countries = len(world.names)
    ndays = prm.n_days

    # --- users
    local = rng.random(n_users) < prm.local_share
    home = np.where(local, study, _choice(rng, world.origin_p, n_users))
    n_rows = 1 + np.floor(rng.lognormal(prm.rows_mu, prm.rows_sigma, n_users)).astype(np.int64)
    n_rows = np.minimum(n_rows, prm.max_rows)
    n_rows = np.where(local, n_rows, np.maximum(n_rows, 2))
    travels = ~local | ((rng.random(n_users) < prm.local_travel_share) & (n_rows >= 2))
    n_abroad = np.zeros(n_users, dtype=np.int64)
    tl = travels & local
    n_abroad[tl] = 1 + rng.binomial(n_rows[tl] - 2, 0.15)
    n_abroad[~local] = 1 + rng.binomial(n_rows[~local] - 2, 0.3)
    span = np.clip(np.rint(rng.lognormal(np.log(900.0), 0.9, n_users)), 64, ndays).astype(np.int64)
    active0 = np.floor(rng.random(n_users) * (ndays - span + 1)).astype(np.int64)
    trip_len = np.minimum(rng.geometric(0.2, n_users), 30).astype(np.int64)

    # --- rows: country and location
    total = int(n_rows.sum())
    row_user = np.repeat(np.arange(n_users, dtype=np.int64), n_rows)
    first = np.concatenate([[0], np.cumsum(n_rows)[:-1]])
    row_pos = np.arange(total, dtype=np.int64) - np.repeat(first, n_rows)
    country = home[row_user].copy()
    ab = np.flatnonzero(row_pos < n_abroad[row_user])
    ab_user = row_user[ab]
    dest = _choice(rng, world.dest_p, len(ab))
    tourist = ~local[ab_user]
    to_study = tourist & ((row_pos[ab] == 0) | (rng.random(len(ab)) < 0.6))
    dest = np.where(to_study | (dest == home[ab_user]), study, dest)
    country[ab] = dest
    size = world.pool_size[country]
    pick = np.floor(size * rng.random(total) ** 1.5).astype(np.int64)
    point = world.pool_start[country] + np.minimum(pick, size - 1)
    n_points = int(world.pool_size.sum())
    key = _sorted_unique(row_user * n_points + point)  # one row per (user, location), sorted
    row_user, point = key // n_points, key % n_points
    country = np.repeat(np.arange(n_countries), world.pool_size)[point]
    n_rows_out = len(row_user)
    abroad = country != home[row_user]

    # --- days per row
    # abroad: one trip window per (user, country)
    ab = np.flatnonzero(abroad)
    gk = row_user[ab] * n_countries + country[ab]  # sorted: rows are sorted by (user, point)
    new = np.concatenate([[True], gk[1:] != gk[:-1]]) if len(gk) else np.zeros(0, bool)
    grp = np.cumsum(new) - 1
    grp_key = gk[new]
    grp_user = grp_key // n_countries
    win_len = trip_len[grp_user]
    win0 = active0[grp_user] + np.floor(
        rng.random(len(grp_key)) * (span[grp_user] - win_len + 1)
    ).astype(np.int64)
    ab_k = 1 + np.floor(rng.random(len(ab)) * win_len[grp]).astype(np.int64)
    ab_rows = np.repeat(ab, ab_k)
    ab_days = np.repeat(win0[grp], ab_k) + np.floor(
        rng.random(len(ab_rows)) * np.repeat(win_len[grp], ab_k)
    ).astype(np.int64)
    # at home: spread over the active period; a few heavy locations over everything
    hm = np.flatnonzero(~abroad)
    hm_user = row_user[hm]
    hm_k = 1 + np.floor(rng.lognormal(prm.days_mu, prm.days_sigma, len(hm))).astype(np.int64)
    heavy = rng.random(len(hm)) < prm.heavy_share
    hm_k[heavy] = np.clip(
        np.rint(
            rng.lognormal(np.log(prm.heavy_days_median), prm.heavy_days_sigma, int(heavy.sum()))
        ),
        prm.heavy_days_min,
        8000,
    )
    lo = np.where(heavy, 0, active0[hm_user])
    width = np.where(heavy, ndays, span[hm_user])
    hm_rows = np.repeat(hm, hm_k)
    hm_days = np.repeat(lo, hm_k) + np.floor(
        rng.random(len(hm_rows)) * np.repeat(width, hm_k)
    ).astype(np.int64)
    # the streak that makes the truth hold: first home row of each traveller
    first_home = hm[np.concatenate([[True], hm_user[1:] != hm_user[:-1]])]
    fh_user = row_user[first_home]
    trav = travels[fh_user]
    first_home, fh_user = first_home[trav], fh_user[trav]
    streak = 2 * trip_len[fh_user] + 1
    s0 = active0[fh_user] + np.floor(
        rng.random(len(fh_user)) * (span[fh_user] - streak + 1)
    ).astype(np.int64)
    st_rows = np.repeat(first_home, streak)
    st_first = np.concatenate([[0], np.cumsum(streak)[:-1]])
    st_days = np.repeat(s0, streak) + np.arange(len(st_rows)) - np.repeat(st_first, streak)

    e_row = np.concatenate([ab_rows, hm_rows, st_rows])
    e_day = np.concatenate([ab_days, hm_days, st_days])
    if prm.userday_text:
        # one hash per distinct (user, day), shared by all rows of that user and day
        ekey = _sorted_unique((e_row << _NDAY_BITS) | e_day)
        e_row, e_day = ekey >> _NDAY_BITS, ekey & ((1 << _NDAY_BITS) - 1)
        if elements is not None:
            elements.append((e_row, e_day))
        ud = _sorted_unique(row_user[e_row] * ndays + e_day)
        ud_hash = _userday_hashes(guid_hex, ud // ndays, ud % ndays, prm.day_text)
        e_hash = ud_hash[np.searchsorted(ud, row_user[e_row] * ndays + e_day)]
        order = np.lexsort((e_hash, e_row))  # by row, then by signed hash (EXPLICIT order)
        e_row, e_hash = e_row[order], e_hash[order]
        if len(e_row) > 1:  # a hash collision inside one row is one element
            keep = np.concatenate([[True], (e_row[1:] != e_row[:-1]) | (e_hash[1:] != e_hash[:-1])])
            e_row, e_hash = e_row[keep], e_hash[keep]
    else:
        ekey = _sorted_unique((e_row << _NDAY_BITS) | day_rank[e_day])
        e_row, e_rank = ekey >> _NDAY_BITS, ekey & ((1 << _NDAY_BITS) - 1)
        if elements is not None:
            order_day = np.argsort(day_rank)
            elements.append((e_row, order_day[e_rank]))
        e_hash = day_hash[e_rank]
    cnt = np.bincount(e_row, minlength=n_rows_out).astype(np.int64)
    e_first = np.concatenate([[0], np.cumsum(cnt)[:-1]])

    # --- HLL bytes: [placeholder, 3 header bytes, payload] per row
    htype = np.full(n_rows_out, TYPE_EXPLICIT, dtype=np.uint8)
    explicit_max = prm.explicit_max
    big = np.flatnonzero(cnt > explicit_max)
    payload = cnt * 8
    if len(big):
        big_entries = np.flatnonzero(np.repeat(cnt > explicit_max, cnt))
        local_row = np.searchsorted(big, e_row[big_entries])
        t_row, t_idx, t_val = filled_registers(local_row, e_hash[big_entries])
        filled = np.bincount(t_row, minlength=len(big))
        sparse_bytes = (filled * (LOG2M + REGWIDTH) + 7) // 8
        is_sparse = (sparse_bytes < FULL_BYTES) & prm.sparse
        htype[big] = np.where(is_sparse, TYPE_SPARSE, TYPE_FULL)
        payload[big] = np.where(is_sparse, sparse_bytes, FULL_BYTES)
    nbytes = 4 + payload
    off = np.concatenate([[0], np.cumsum(nbytes)])
    starts = off[:-1]
    buf = np.zeros(int(off[-1]), dtype=np.uint8)
    buf[starts + 1] = htype
    buf[starts + 2] = PARAM_BYTE
    buf[starts + 3] = prm.cutoff_byte
    expl = np.repeat(htype == TYPE_EXPLICIT, cnt)
    xr = e_row[expl]
    j = np.flatnonzero(expl) - e_first[xr]
    dest_pos = starts[xr] + 4 + 8 * j
    buf[dest_pos[:, None] + np.arange(8)] = e_hash[expl].astype(">i8").view(np.uint8).reshape(-1, 8)
    if len(big):
        t_first = np.concatenate([[0], np.cumsum(filled)[:-1]])
        sp = is_sparse[t_row]
        chunk = ((t_idx[sp] << REGWIDTH) | t_val[sp]).astype(">u2").view(np.uint8).reshape(-1, 2)
        jj = np.flatnonzero(sp) - t_first[t_row[sp]]
        pos = starts[big[t_row[sp]]] + 4 + 2 * jj
        buf[pos[:, None] + np.arange(2)] = chunk
        full_rows = np.flatnonzero(~is_sparse)
        if len(full_rows):
            regs = np.zeros((len(full_rows), NREGS), dtype=np.uint8)
            fr = ~sp
            regs[np.searchsorted(full_rows, t_row[fr]), t_idx[fr]] = t_val[fr]
            pos = starts[big[full_rows]] + 4
            buf[pos[:, None] + np.arange(FULL_BYTES)] = pack_full(regs)
    text = hex_ascii(buf)
    text[2 * starts] = ord("\\")
    text[2 * starts + 1] = ord("x")

    guid_rows = guid_hex[row_user].reshape(-1)
    table = pa.table(
        {
            "user_guid": _string_array(
                guid_rows, np.arange(n_rows_out + 1, dtype=np.int64) * id_width
            ),
            "latitude": world.pool_lat.take(pa.array(point)),
            "longitude": world.pool_lon.take(pa.array(point)),
            "userday_hll": _string_array(text, 2 * off),
        }
    )
    names = pa.array(world.names)
    codes = pa.array(world.codes)
    truth = pa.table(
        {
            "user_guid": _string_array(
                guid_hex.reshape(-1), np.arange(n_users + 1, dtype=np.int64) * id_width
            ),
            "home_country": names.take(pa.array(home)),
            "home_country_code": codes.take(pa.array(home)),
            "classification": pc.if_else(pa.array(home == study), LOCAL, TOURIST),
        }
    )
    types = {name: int(np.count_nonzero(htype == t)) for t, name in HLL_TYPE_NAMES.items()}
    max_rows = int(np.bincount(row_user, minlength=n_users).max()) if n_rows_out else 0
    return table, truth, types, max_rows


def _write_elements(fh, table: pa.Table, e_row: np.ndarray, e_day: np.ndarray, day_text) -> None:
    """Append each element of a chunk as ``user_guid,latitude,longitude,day,userday``."""
    g = table["user_guid"].to_pylist()
    la = table["latitude"].to_pylist()
    lo = table["longitude"].to_pylist()
    for r, d in zip(e_row.tolist(), e_day.tolist(), strict=True):
        date = day_text[d]
        fh.write(f"{g[r]},{la[r]},{lo[r]},{d},{userday_text(g[r], date)}\n")


def _guids(rng: np.random.Generator, n: int) -> np.ndarray:
    """n distinct random 128-bit ids, sorted, as (n, 32) uint8 lowercase hex."""
    ids = rng.integers(0, np.iinfo(np.uint64).max, size=(n, 2), dtype=np.uint64, endpoint=True)
    order = np.lexsort((ids[:, 1], ids[:, 0]))
    ids = ids[order]
    if n > 1:
        same = (ids[1:, 0] == ids[:-1, 0]) & (ids[1:, 1] == ids[:-1, 1])
        if same.any():  # probability ~n**2 / 2**129: never in practice
            raise RuntimeError("duplicate random user ids; use another seed")
    raw = ids.astype(">u8").view(np.uint8).reshape(n, 16)
    return hex_ascii(raw)


_B64 = np.frombuffer(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", dtype=np.uint8
)
B64_ID_LEN = 43


def _guids_base64(rng: np.random.Generator, n: int) -> np.ndarray:
    """n distinct HMAC-SHA256-like ids, byte-sorted, as (n, 43) uint8 ASCII.

    Like ``RTRIM(ENCODE(HMAC(id, key, 'sha256'), 'base64'), '=')``: 32 random
    bytes in standard base64 (mixed case, ``+`` and ``/``) without the ``=``.
    """
    raw = np.zeros((n, 33), dtype=np.uint8)
    raw[:, :32] = rng.integers(0, 256, size=(n, 32), dtype=np.uint8)
    g = raw.reshape(n, 11, 3).astype(np.uint32)
    v = (g[:, :, 0] << 16) | (g[:, :, 1] << 8) | g[:, :, 2]
    six = np.stack([(v >> 18) & 63, (v >> 12) & 63, (v >> 6) & 63, v & 63], axis=2)
    text = _B64[six.reshape(n, 44)[:, :B64_ID_LEN]]
    keys = np.ascontiguousarray(text).view(f"S{B64_ID_LEN}").ravel()
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    if n > 1 and (keys[1:] == keys[:-1]).any():  # probability ~n**2 / 2**257
        raise RuntimeError("duplicate random user ids; use another seed")
    return np.ascontiguousarray(text[order])


def _day_texts(n_days: int) -> tuple[str, ...]:
    """ISO dates of days 0..n_days-1 counted from 2000-01-01."""
    d = np.datetime64("2000-01-01") + np.arange(n_days)
    return tuple(str(x) for x in d)


def userday_text(user_guid: str, date: str) -> str:
    """The hashed userday of the seed's shape: 32 hex digits of Murmur3-128 of ``"user:date"``.

    The file's elements are ``hll_hash_text(userday_text(user, date))``,
    so ``hll_add_agg(hll_hash_text(userday), 11, 5, 0, 1)`` over a row's
    userdays in PostgreSQL gives the row's value.
    """
    import mmh3

    return mmh3.hash_bytes(f"{user_guid}:{date}".encode()).hex()


def _userday_hashes(
    guid_ascii: np.ndarray, user: np.ndarray, day: np.ndarray, day_text: Sequence[str]
) -> np.ndarray:
    """``hll_hash_text(userday_text(guid, date))`` of each (user, day) pair (int64)."""
    import mmh3

    hb = mmh3.hash_bytes
    h64 = mmh3.hash64
    ids = [bytes(r).decode("ascii") + ":" for r in guid_ascii]
    out = np.fromiter(
        (
            h64(hb((ids[u] + day_text[d]).encode()).hex().encode(), 0, True, True)[0]
            for u, d in zip(user.tolist(), day.tolist(), strict=True)
        ),
        dtype=np.int64,
        count=len(user),
    )
    return out


def params_bytes(log2m: int, regwidth: int, expthresh: int, sparseon: int) -> tuple[int, int, int]:
    """(parameter byte, cutoff byte, largest EXPLICIT count) of postgresql-hll parameters.

    Only log2m 11 and regwidth 5 are generated (SPARSE entries are then 16-bit
    chunks); expthresh is -1 (auto: 160), 0 (no EXPLICIT) or a power of two.
    """
    if (log2m, regwidth) != (LOG2M, REGWIDTH):
        raise ValueError(f"--params: only log2m {LOG2M} and regwidth {REGWIDTH} are generated")
    if sparseon not in (0, 1):
        raise ValueError("--params: sparseon must be 0 or 1")
    if expthresh == -1:
        code, emax = 63, EXPLICIT_MAX
    elif expthresh == 0:
        code, emax = 0, 0
    elif expthresh > 0 and expthresh & (expthresh - 1) == 0 and expthresh <= 16384:
        code, emax = expthresh.bit_length(), expthresh
    else:
        raise ValueError("--params: expthresh must be -1, 0 or a power of two up to 16384")
    return PARAM_BYTE, (sparseon << 6) | code, emax


#: ``homeloc synth --shape``: presets of :func:`generate`'s keyword arguments.
SHAPES: dict[str, dict] = {
    "default": {},
    # The seed's real shape: base64 HMAC ids, hll_set_defaults(11, 5, 0, 1)
    # (every value SPARSE from the first element, ``\x138b40``), userdays as
    # hll_hash_text of a hashed "user:date", a coarser grid, a heavier tail of
    # locations per user (the seed finds a user with 500 locations in its first
    # 100 users).
    "seed": {
        "ids": "base64",
        "userdays": "text",
        "params": (11, 5, 0, 1),
        "grid_step": 0.05,
        "rows_mu": 0.5,
        "rows_sigma": 1.35,
        "max_rows": 3000,
    },
    # Power users: about 17 % SPARSE and 8 % FULL values at the default
    # parameters (the rest EXPLICIT), base64 ids.
    "heavy": {
        "ids": "base64",
        "heavy_share": 0.3,
        "heavy_days_median": 560.0,
        "heavy_days_sigma": 0.8,
        "heavy_days_min": 175,
        "chunk_users": 25_000,
    },
}


_WORLD_CACHE: dict[tuple, tuple[object, _World]] = {}


def generate(
    n_users: int,
    out_path: str | Path,
    seed: int = 0,
    study_country: str = "Germany",
    *,
    local_share: float = 0.7,
    chunk_users: int = 200_000,
    rows_mu: float = 0.35,
    rows_sigma: float = 1.05,
    max_rows: int = 1000,
    days_mu: float = 0.65,
    days_sigma: float = 1.0,
    heavy_share: float = 0.003,
    local_travel_share: float = 0.25,
    n_days: int = 4383,
    explicit_max: int = EXPLICIT_MAX,
    grid_step: float = 0.01,
    decimals: int = 2,
    pool_size: int = 2000,
    study_pool_size: int = 30_000,
    countries=None,
    progress: Callable[[int, int, int], None] | None = None,
    ids: str = "hex",
    userdays: str = "bigint",
    params: tuple[int, int, int, int] | None = None,
    heavy_days_median: float = 400.0,
    heavy_days_sigma: float = 0.9,
    heavy_days_min: int = 100,
    elements_path: str | Path | None = None,
) -> SynthSummary:
    """Write ``n_users`` synthetic users to ``out_path`` (+ ``<out>.truth.csv``); deterministic per seed.

    Both files are written atomically (temp file + rename), streaming
    ``chunk_users`` users at a time. ``countries`` defaults to the dissolved
    Natural Earth countries. ``progress(users_done, n_users, rows_done)`` is
    called after every chunk. Days are numbered from 2000-01-01 (day 0) to
    ``n_days - 1`` (default: 12 years). ``explicit_max`` is the largest
    number of values stored as EXPLICIT (PostgreSQL's auto threshold, 160, by
    default); 0 stores every value as SPARSE (or FULL), which PostgreSQL
    accepts too, like input whose values all start with ``\\x138b7f``.

    ``ids``: ``"hex"`` (32 lowercase hex digits) or ``"base64"`` (43
    characters, like the seed's HMAC ids). ``userdays``: ``"bigint"``
    (elements ``hll_hash_bigint(day)``) or ``"text"``
    (``hll_hash_text(userday_text(user, date))``, per user). ``params``
    (log2m, regwidth, expthresh, sparseon) sets the header bytes and the
    storage types (overrides ``explicit_max``). ``heavy_days_*``: the
    lognormal number of days of a heavy location. ``elements_path``, for
    tests of small files: also write every element as a CSV
    ``user_guid,latitude,longitude,day,userday`` (userday: the hashed text).
    """
    from homeloc_assets.atomic import atomic_path

    t0 = time.perf_counter()
    if n_users < 1:
        raise ValueError("n_users must be >= 1")
    if not 0 < n_days <= 1 << _NDAY_BITS:
        raise ValueError(f"n_days must be in 1..{1 << _NDAY_BITS}")
    if ids not in ("hex", "base64"):
        raise ValueError(f"ids must be 'hex' or 'base64', not {ids!r}")
    if userdays not in ("bigint", "text"):
        raise ValueError(f"userdays must be 'bigint' or 'text', not {userdays!r}")
    cutoff, sparse = CUTOFF_BYTE, True
    if params is not None:
        _, cutoff, explicit_max = params_bytes(*params)
        sparse = bool(params[3])
    out_path = Path(out_path)
    truth_path = truth_path_for(out_path)
    # The world (pools, weights) depends on the countries and these parameters
    # only; it is cached per process (a given countries object is kept alive in
    # the cache, so its id cannot be reused by another object).
    cache_key = (
        None if countries is None else id(countries),
        study_country,
        seed,
        grid_step,
        decimals,
        pool_size,
        study_pool_size,
    )
    cached = _WORLD_CACHE.get(cache_key)
    if cached is not None and cached[0] is countries:
        world = cached[1]
    else:
        source = countries
        if source is None:
            from homeloc_assets.geo.countries import dissolve_countries, load_world_countries

            source = dissolve_countries(load_world_countries())
        world = _build_world(
            source,
            study_country,
            np.random.default_rng([seed, 2]),
            grid_step,
            decimals,
            pool_size,
            study_pool_size,
        )
        if len(_WORLD_CACHE) >= 8:
            _WORLD_CACHE.clear()
        _WORLD_CACHE[cache_key] = (countries, world)
    prm = _Params(
        local_share=local_share,
        rows_mu=rows_mu,
        rows_sigma=rows_sigma,
        max_rows=max_rows,
        days_mu=days_mu,
        days_sigma=days_sigma,
        heavy_share=heavy_share,
        n_days=n_days,
        local_travel_share=local_travel_share,
        explicit_max=explicit_max,
        sparse=sparse,
        cutoff_byte=cutoff,
        heavy_days_median=heavy_days_median,
        heavy_days_sigma=heavy_days_sigma,
        heavy_days_min=heavy_days_min,
        userday_text=userdays == "text",
        day_text=_day_texts(n_days) if userdays == "text" else (),
    )
    day_hash, day_rank = _day_hashes(n_days)
    make_ids = _guids if ids == "hex" else _guids_base64
    guids = make_ids(np.random.default_rng([seed, 1]), n_users)
    day_text = prm.day_text or _day_texts(n_days)
    elements: list | None = [] if elements_path is not None else None
    efh = None
    if elements_path is not None:
        efh = open(elements_path, "w")  # noqa: SIM115 - closed below
        efh.write("user_guid,latitude,longitude,day,userday\n")

    schema = pa.schema([(c, pa.large_string()) for c in HEADER.split(",")])
    truth_schema = pa.schema([(c, pa.large_string()) for c in TRUTH_HEADER.split(",")])
    opts = pacsv.WriteOptions(include_header=False, quoting_style="none", batch_size=65536)
    n_rows = n_locals = max_per_user = 0
    types = dict.fromkeys(HLL_TYPE_NAMES.values(), 0)
    with atomic_path(out_path) as tmp, atomic_path(truth_path) as ttmp:
        tmp.write_text(HEADER + "\n")
        ttmp.write_text(TRUTH_HEADER + "\n")
        with (
            open(tmp, "ab") as fh,
            open(ttmp, "ab") as tfh,
            pacsv.CSVWriter(fh, schema, write_options=opts) as w,
            pacsv.CSVWriter(tfh, truth_schema, write_options=opts) as tw,
        ):
            for ci, lo in enumerate(range(0, n_users, chunk_users)):
                hi = min(lo + chunk_users, n_users)
                rng = np.random.default_rng([seed, 3, ci])
                table, truth, t, mx = _chunk(
                    rng, guids[lo:hi], world, prm, day_hash, day_rank, elements
                )
                if efh is not None and elements:
                    _write_elements(efh, table, *elements.pop(), day_text)
                w.write_table(table.cast(schema))
                tw.write_table(truth.cast(truth_schema))
                n_rows += table.num_rows
                n_locals += int(pc.sum(pc.equal(truth["classification"], LOCAL)).as_py() or 0)
                max_per_user = max(max_per_user, mx)
                for k, v in t.items():
                    types[k] += v
                if progress is not None:
                    progress(hi, n_users, n_rows)
        size = tmp.stat().st_size
    if efh is not None:
        efh.close()
    return SynthSummary(
        out_path=out_path,
        truth_path=truth_path,
        n_users=n_users,
        n_rows=n_rows,
        n_locals=n_locals,
        n_tourists=n_users - n_locals,
        study_country=world.names[world.study],
        seed=seed,
        bytes_written=size,
        seconds=time.perf_counter() - t0,
        hll_types=types,
        max_rows_per_user=max_per_user,
    )


# ---------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="homeloc synth",
        description="Write a synthetic seed-format CSV (sorted by user_guid, real postgresql-hll "
        "values) and <out>.truth.csv with each user's true home country.",
    )
    p.add_argument("--users", type=int, required=True, help="number of users")
    p.add_argument("--out", type=Path, required=True, help="CSV file to write")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--study-country", default="Germany", help="name or code (default Germany)")
    p.add_argument("--local-share", type=float, default=0.7, help="share of locals (default 0.7)")
    p.add_argument(
        "--chunk-users",
        type=int,
        default=None,
        help="users per chunk (default 200,000; heavy 25,000)",
    )
    p.add_argument(
        "--shape",
        choices=sorted(SHAPES),
        default="default",
        help="default: hex ids, 11/5/-1/1 values of hll_hash_bigint(day); seed: the real data's "
        "shape (43-char base64 HMAC ids, 11/5/0/1 values, SPARSE from the first element, userdays "
        "hll_hash_text of a hashed user:date, coarser grid, heavier tail of locations); heavy: "
        "power users (about 17%% SPARSE and 8%% FULL values)",
    )
    p.add_argument(
        "--params",
        default=None,
        metavar="LOG2M,REGWIDTH,EXPTHRESH,SPARSEON",
        help="postgresql-hll parameters of the values, like hll_set_defaults (e.g. 11,5,0,1; "
        "only log2m 11 / regwidth 5); overrides the shape's and --explicit-max",
    )
    p.add_argument("--ids", choices=("hex", "base64"), default=None, help="id format (shape's)")
    p.add_argument(
        "--userdays", choices=("bigint", "text"), default=None, help="element hashes (shape's)"
    )
    p.add_argument(
        "--explicit-max",
        type=int,
        default=None,
        help="largest value count stored as EXPLICIT (default 160, PostgreSQL's); "
        "0 writes every value as SPARSE/FULL",
    )
    return p


def synth_main(argv: Sequence[str] | None = None) -> int:
    """``homeloc synth --users N --out FILE [--seed S] [--study-country X]``; returns the exit code."""
    args = _parser().parse_args(None if argv is None else list(argv))
    if args.users < 1:
        print("homeloc synth: --users must be >= 1", file=sys.stderr)
        return 2
    err = sys.stderr
    t0 = time.perf_counter()
    try:
        if err.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            with Progress(
                TextColumn("synth"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("users"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            ) as bar:
                task = bar.add_task("synth", total=args.users)

                def progress(done: int, total: int, rows: int) -> None:
                    bar.update(task, completed=done)

                summary = _run(args, progress)
        else:

            def progress(done: int, total: int, rows: int) -> None:
                el = time.perf_counter() - t0
                print(
                    f"synth: {done:,}/{total:,} users, {rows:,} rows, {el:.1f} s",
                    file=err,
                    flush=True,
                )

            summary = _run(args, progress)
    except (ValueError, OSError) as exc:
        print(f"homeloc synth: {exc}", file=sys.stderr)
        return 2
    print(summary.describe())
    print(f"truth: {summary.truth_path}")
    return 0


def parse_params(text: str) -> tuple[int, int, int, int]:
    """``"11,5,0,1"`` -> (11, 5, 0, 1), checked by :func:`params_bytes`."""
    try:
        parts = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ValueError(
            f"--params {text!r}: four integers LOG2M,REGWIDTH,EXPTHRESH,SPARSEON"
        ) from None
    if len(parts) != 4:
        raise ValueError(f"--params {text!r}: four integers LOG2M,REGWIDTH,EXPTHRESH,SPARSEON")
    params_bytes(*parts)
    return parts  # type: ignore[return-value]


def shape_kwargs(
    shape: str = "default",
    params: str | None = None,
    ids: str | None = None,
    userdays: str | None = None,
    explicit_max: int | None = None,
    chunk_users: int | None = None,
) -> dict:
    """:func:`generate`'s keyword arguments for a ``--shape`` and its overrides."""
    kw = dict(SHAPES[shape])
    if explicit_max is not None:
        kw.pop("params", None)
        kw["explicit_max"] = explicit_max
    if params is not None:
        kw["params"] = parse_params(params)
    if ids is not None:
        kw["ids"] = ids
    if userdays is not None:
        kw["userdays"] = userdays
    if chunk_users is not None:
        kw["chunk_users"] = chunk_users
    return kw


def _run(args: argparse.Namespace, progress: Callable[[int, int, int], None]) -> SynthSummary:
    kw = shape_kwargs(
        args.shape, args.params, args.ids, args.userdays, args.explicit_max, args.chunk_users
    )
    return generate(
        args.users,
        args.out,
        seed=args.seed,
        study_country=args.study_country,
        local_share=args.local_share,
        progress=progress,
        **kw,
    )


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(synth_main())
