"""One user batch, start to finish: read, validate, locate, union, pick the home.

``process_batch`` is the unit of work of the partitioned assets; a test (or a
worker process) calls it with no Dagster at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from homeloc_assets.geo.layers import layer_assets
from homeloc_assets.inference.homes import GroupedCardinality, country_userdays, pick_homes
from homeloc_assets.inference.regions import region_userdays
from homeloc_assets.inputs import read_batch


@dataclass
class BatchResult:
    """The tables of one batch and its counts.

    ``locations``: validated rows with the country of each point;
    ``country_userdays``: per (user, country) the union estimate;
    ``homes``: per user the home and its confidence columns;
    ``rejects``: rejected rows (``line`` relative to the batch start);
    ``stats``: counts for metadata (``n_lines``, ``rows``, ``rejected``, ``users``, ...);
    ``layer_tables``: per extra region layer its two tables, by asset name
    (see :func:`homeloc_assets.geo.layers.layer_assets`).
    """

    locations: pa.Table
    country_userdays: pa.Table
    homes: pa.Table
    rejects: pa.Table
    stats: dict[str, Any] = field(default_factory=dict)
    layer_tables: dict[str, pa.Table] = field(default_factory=dict)
    users: pa.Table | None = None  # inputs.reader.USERS_SCHEMA: the batch's users, hashed
    #: per extra layer the region of each row (in memory only: the landscape's per-layer unions)
    layer_located: dict[str, Any] = field(default_factory=dict)
    #: ``locations.userday_hll`` as the reader validated it (``hll.ParsedColumn``, in memory
    #: only): the landscape's unions use it instead of parsing the bytes again
    parsed_hll: Any = None


def process_batch(
    path: str | Path,
    start: int,
    end: int,
    country_names: np.ndarray,
    country_codes: np.ndarray,
    lookup: Any,
    backend: GroupedCardinality,
    layers: Sequence[Any] = (),
    *,
    expect: tuple[int, int, str] | None = None,
    hll_params: int | None = None,
) -> BatchResult:
    """Process the byte range ``[start, end)`` of a userdays CSV grouped by user.

    ``lookup.lookup(lon, lat)`` gives the index into ``country_names`` /
    ``country_codes`` of each point (-1: in no country); ``backend`` unions HLLs;
    each of ``layers`` (:mod:`homeloc_assets.geo.layers`) adds its per-region
    userdays and homes from the same rows. ``expect`` (the planned file's size,
    mtime_ns, fingerprint) and ``hll_params`` (the file's params code) are
    passed to :func:`~homeloc_assets.inputs.read_batch`.
    """
    batch = read_batch(path, start, end, expect=expect, hll_params=hll_params)
    rows = batch.rows
    lon = rows.column("longitude").to_numpy()
    lat = rows.column("latitude").to_numpy()
    cidx = np.asarray(lookup.lookup(lon, lat), dtype=np.int64)
    inside = cidx >= 0
    names = np.asarray(country_names, dtype=object)
    codes = np.asarray(country_codes, dtype=object)
    safe = np.where(inside, cidx, 0)
    locations = pa.table(
        {
            "user_guid": rows.column("user_guid"),
            "latitude": rows.column("latitude"),
            "longitude": rows.column("longitude"),
            "country": pa.array(names[safe], pa.string(), mask=~inside),
            "country_code": pa.array(codes[safe], pa.string(), mask=~inside),
            "userday_hll": rows.column("hll"),
            "line": rows.column("line"),
        }
    )
    guid = rows.column("user_guid").combine_chunks()
    hlls = rows.column("hll").combine_chunks()
    per_country, per_user = country_userdays(guid, cidx, hlls, names, codes, backend,
                                             batch.parsed_hll)
    homes = pick_homes(per_country, per_user)
    cu = per_country.drop_columns(["user_index", "country_index"])
    stats = {
        "n_lines": int(batch.n_lines),
        "rows": int(rows.num_rows),
        "rejected": int(batch.rejects.num_rows),
        "users": int(per_user.num_rows),
        "users_with_home": int(homes.num_rows),
        "users_without_home": int(per_user.num_rows - homes.num_rows),
        "points_in_no_country": int((~inside).sum()),
        "ties": int(pc.sum(homes.column("tie")).as_py() or 0) if homes.num_rows else 0,
        "duplicate_users": int(homes.num_rows - pc.count_distinct(homes.column("user_guid")).as_py())
        if homes.num_rows
        else 0,
        "first_user": guid[0].as_py() if len(guid) else None,
        "last_user": guid[-1].as_py() if len(guid) else None,
    }
    layer_tables = {}
    layer_located = {}
    for layer in layers:
        located = layer.locate(lon, lat)
        per_region, region_homes = region_userdays(guid, located.index, hlls, located.names,
                                                   located.codes, backend, batch.parsed_hll)
        ud_name, home_name = layer_assets(layer.name)
        layer_tables[ud_name], layer_tables[home_name] = per_region, region_homes
        layer_located[layer.name] = located
        stats[f"users_with_home_{layer.name}"] = int(region_homes.num_rows)
    return BatchResult(locations, cu, homes, batch.rejects, stats, layer_tables, batch.users,
                       layer_located, batch.parsed_hll)
