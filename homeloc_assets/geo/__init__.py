"""Countries and point-in-country lookup (no Dagster here).

``countries`` loads/dissolves/resolves country polygons; ``lookup`` answers
"which country contains this (lon, lat)?" for millions of points, exactly.
"""

from homeloc_assets.geo.countries import (
    CountryError,
    default_countries_path,
    dissolve_countries,
    load_world_countries,
    resolve_country,
)
from homeloc_assets.geo.lookup import CountryLookup, exact_lookup

__all__ = [
    "CountryError",
    "CountryLookup",
    "default_countries_path",
    "dissolve_countries",
    "exact_lookup",
    "load_world_countries",
    "resolve_country",
]
