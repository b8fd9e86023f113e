"""Per (user, country) distinct userdays, the home country, and Local/Tourist.

The home is the country whose unioned userday HLL has the largest cardinality
(``hll_cardinality(hll_union_agg(...))``) — the estimate, never the HLL bytes.
Ties are broken by country name (alphabetical) and flagged.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from homeloc_assets.backends.base import GroupedCardinality

CLASS_LOCAL = "Local"
CLASS_TOURIST = "Tourist"
CLASS_UNDETERMINED = "undetermined"


def user_codes(user_guid: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Dense int64 codes 0..n-1 for runs of equal ``user_guid`` (rows are grouped by user)."""
    n = len(user_guid)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if isinstance(user_guid, pa.ChunkedArray):
        user_guid = user_guid.combine_chunks()
    change = pc.not_equal(user_guid.slice(1), user_guid.slice(0, n - 1))
    starts = np.empty(n, dtype=np.int64)
    starts[0] = 0
    starts[1:] = change.to_numpy(zero_copy_only=False)
    return np.cumsum(starts)


def country_userdays(
    user_guid: pa.Array,
    country_index: np.ndarray,
    hlls: pa.Array,
    country_names: np.ndarray,
    country_codes: np.ndarray,
    backend: GroupedCardinality,
    parsed: object = None,
) -> tuple[pa.Table, pa.Table]:
    """Union the location HLLs per (user, country) and per user over all countries.

    ``country_index`` is -1 for points in no country; those rows take part in no
    union. Returns ``(per_country, per_user)``: ``per_country`` has
    ``user_guid, user_index, country, country_code, country_index, userdays,
    locations`` sorted by user (input order) then country index, where
    ``user_index`` is the row of the user in ``per_user``; ``per_user`` has
    ``user_guid, total_userdays, locations, locations_no_country``.

    ``parsed``: ``hlls`` already parsed (``hll.parse_many``, the reader's). A backend
    with ``takes_parsed`` (the embedded engine) unions the parse, made once here
    when not given, in both unions; the bytes are not read again.
    """
    codes = user_codes(user_guid)
    n_users = int(codes[-1]) + 1 if len(codes) else 0
    country_index = np.asarray(country_index, dtype=np.int64)
    inside = country_index >= 0
    n_countries = len(country_names)

    key = codes[inside] * (n_countries + 1) + country_index[inside]
    uniq, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    every = bool(inside.all())
    takes_parsed = getattr(backend, "takes_parsed", False)
    if takes_parsed and parsed is not None:
        blobs_in = parsed if every else parsed.take(np.flatnonzero(inside))
    else:
        blobs_in = hlls if every else hlls.filter(pa.array(inside))
        if takes_parsed:
            from homeloc_assets import hll

            blobs_in = hll.parse_many(blobs_in)  # once, for both unions
    if len(uniq):
        userdays = backend.grouped_cardinality(blobs_in, inverse.astype(np.int64), len(uniq))
    else:
        userdays = np.zeros(0, dtype=np.float64)
    g_user = uniq // (n_countries + 1)
    g_country = uniq % (n_countries + 1)

    first_row = np.searchsorted(codes, np.arange(n_users))
    guid_of_user = pc.take(user_guid, pa.array(first_row)) if n_users else pa.array([], pa.string())
    per_country = pa.table(
        {
            "user_guid": pc.take(guid_of_user, pa.array(g_user)),
            "user_index": pa.array(g_user.astype(np.int64)),
            "country": pa.array(country_names[g_country], pa.string()),
            "country_code": pa.array(country_codes[g_country], pa.string()),
            "country_index": pa.array(g_country.astype(np.int32)),
            "userdays": pa.array(np.asarray(userdays, dtype=np.float64)),
            "locations": pa.array(counts.astype(np.int64)),
        }
    )

    user_in = codes[inside]
    total = np.zeros(n_users, dtype=np.float64)
    if len(user_in):
        users_with, inv_u = np.unique(user_in, return_inverse=True)
        total[users_with] = backend.grouped_cardinality(
            blobs_in, inv_u.astype(np.int64), len(users_with)
        )
    per_user = pa.table(
        {
            "user_guid": guid_of_user,
            "total_userdays": pa.array(total),
            "locations": pa.array(np.bincount(codes, minlength=n_users).astype(np.int64)),
            "locations_no_country": pa.array(
                np.bincount(codes[~inside], minlength=n_users).astype(np.int64)
            ),
        }
    )
    return per_country, per_user


def pick_homes(per_country: pa.Table, per_user: pa.Table) -> pa.Table:
    """The home per user: the country with the most distinct userdays.

    Columns: ``user_guid, country, country_code, userdays, total_userdays,
    home_share, runner_up, runner_up_code, runner_up_userdays, margin, tie,
    countries, locations, locations_no_country``. Users without any point in a
    country get no row. Ties go to the alphabetically first country name and
    set ``tie``.
    """
    n = per_country.num_rows
    if n == 0:
        return _empty_homes()
    guid = per_country.column("user_guid").combine_chunks()
    ucode = per_country.column("user_index").to_numpy()
    userdays = per_country.column("userdays").to_numpy()
    cidx = per_country.column("country_index").to_numpy()
    order = np.lexsort((cidx, -userdays, ucode))
    u_sorted = ucode[order]
    first = np.ones(n, dtype=bool)
    first[1:] = u_sorted[1:] != u_sorted[:-1]
    home_pos = order[first]
    # runner-up: the row right after the home in sorted order, if same user
    nxt = np.flatnonzero(first) + 1
    has_next = nxt < n
    has_next[has_next] = u_sorted[nxt[has_next]] == u_sorted[np.flatnonzero(first)[has_next]]
    run_pos = np.where(has_next, order[np.minimum(nxt, n - 1)], -1)
    n_countries = np.diff(np.append(np.flatnonzero(first), n))

    home_days = userdays[home_pos]
    run_days = np.where(has_next, userdays[np.maximum(run_pos, 0)], 0.0)
    country = per_country.column("country").combine_chunks()
    code = per_country.column("country_code").combine_chunks()
    run_idx = pa.array(np.maximum(run_pos, 0))
    mask_none = pa.array(~has_next)
    runner_up = pc.if_else(mask_none, pa.scalar(None, pa.string()), pc.take(country, run_idx))
    runner_code = pc.if_else(mask_none, pa.scalar(None, pa.string()), pc.take(code, run_idx))

    homes = pa.table(
        {
            "user_guid": pc.take(guid, pa.array(home_pos)),
            "country": pc.take(country, pa.array(home_pos)),
            "country_code": pc.take(code, pa.array(home_pos)),
            "userdays": pa.array(home_days),
        }
    )
    users = per_user.take(pa.array(ucode[home_pos]))
    total = users.column("total_userdays").to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(total > 0, home_days / total, np.nan)
    homes = homes.append_column("total_userdays", pa.array(total))
    homes = homes.append_column("home_share", pa.array(share))
    homes = homes.append_column("runner_up", runner_up)
    homes = homes.append_column("runner_up_code", runner_code)
    homes = homes.append_column("runner_up_userdays", pa.array(run_days))
    homes = homes.append_column("margin", pa.array(home_days - run_days))
    homes = homes.append_column("tie", pa.array(has_next & (run_days == home_days)))
    homes = homes.append_column("countries", pa.array(n_countries.astype(np.int32)))
    homes = homes.append_column("locations", users.column("locations"))
    homes = homes.append_column("locations_no_country", users.column("locations_no_country"))
    return homes


HOMES_SCHEMA = pa.schema(
    [
        ("user_guid", pa.string()),
        ("country", pa.string()),
        ("country_code", pa.string()),
        ("userdays", pa.float64()),
        ("total_userdays", pa.float64()),
        ("home_share", pa.float64()),
        ("runner_up", pa.string()),
        ("runner_up_code", pa.string()),
        ("runner_up_userdays", pa.float64()),
        ("margin", pa.float64()),
        ("tie", pa.bool_()),
        ("countries", pa.int32()),
        ("locations", pa.int64()),
        ("locations_no_country", pa.int64()),
    ]
)


def _empty_homes() -> pa.Table:
    return HOMES_SCHEMA.empty_table()
