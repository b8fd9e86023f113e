"""Per (user, region) distinct userdays and the home region, for any region layer.

The same unions and the same argmax as the country layer
(:func:`~homeloc_assets.inference.homes.country_userdays`,
:func:`~homeloc_assets.inference.homes.pick_homes`), named for a layer:
``region``/``region_code`` instead of ``country``/``country_code``.  Ties go to
the first region in the layer's order (by name for polygons, by cell index for
H3) and set ``tie``.  No Dagster here.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from homeloc_assets.inference.homes import GroupedCardinality, country_userdays, pick_homes

REGION_USERDAYS_COLUMNS = ["user_guid", "region", "region_code", "userdays", "locations"]
REGION_HOME_COLUMNS = ["user_guid", "region", "region_code", "userdays", "total_userdays",
                       "home_share", "runner_up_code", "runner_up_userdays", "margin", "tie",
                       "regions"]

REGION_USERDAYS_SCHEMA = pa.schema([("user_guid", pa.string()), ("region", pa.string()),
                                    ("region_code", pa.string()), ("userdays", pa.float64()),
                                    ("locations", pa.int64())])


def region_userdays(
    user_guid: pa.Array,
    region_index: np.ndarray,
    hlls: pa.Array,
    names: np.ndarray,
    codes: np.ndarray,
    backend: GroupedCardinality,
    parsed: object = None,
) -> tuple[pa.Table, pa.Table]:
    """``(per_region, homes)`` of one batch for one layer (``parsed``: see ``country_userdays``).

    ``per_region``: ``user_guid, region, region_code, userdays, locations``;
    ``homes``: one row per user with a point in a region: ``user_guid, region,
    region_code, userdays, total_userdays, home_share, runner_up_code,
    runner_up_userdays, margin, tie, regions``.
    """
    per, per_user = country_userdays(user_guid, region_index, hlls,
                                     np.asarray(names, dtype=object),
                                     np.asarray(codes, dtype=object), backend, parsed)
    homes = pick_homes(per, per_user)
    per = per.rename_columns(["user_guid", "user_index", "region", "region_code",
                              "region_index", "userdays", "locations"])
    homes = homes.rename_columns([{"country": "region", "country_code": "region_code",
                                   "countries": "regions"}.get(c, c) for c in homes.column_names])
    return per.select(REGION_USERDAYS_COLUMNS), homes.select(REGION_HOME_COLUMNS)
