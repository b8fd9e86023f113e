"""The one ``Definitions`` of homeloc: assets, checks, resources, IO manager.

``workspace.yaml`` points here and ``homeloc run`` builds the same definitions
with ``build_definitions`` (its flags become ``Settings``).
"""

from __future__ import annotations

import dagster as dg

from homeloc_assets.defs.batches import make_batch_assets, user_batch_assets, user_batches
from homeloc_assets.defs.classification import homeloc_exports, user_classification
from homeloc_assets.defs.countries import countries, world_countries
from homeloc_assets.defs.io_managers import HomelocIOManager
from homeloc_assets.defs.jobs import JOBS
from homeloc_assets.defs.landscape import LANDSCAPE_ASSETS, make_landscape_assets
from homeloc_assets.defs.publishing import homeloc_published
from homeloc_assets.defs.reports import REPORT_ASSETS, make_layer_reports
from homeloc_assets.defs.resources import HllBackendResource, HomelocConfig
from homeloc_assets.defs.rules import home_rule_sensitivity
from homeloc_assets.defs.schedules import SCHEDULES
from homeloc_assets.defs.sensors import SENSORS
from homeloc_assets.settings import Settings

ASSETS = [
    world_countries,
    countries,
    user_batch_assets,
    user_classification,
    homeloc_exports,
    *REPORT_ASSETS,
    *LANDSCAPE_ASSETS,
    home_rule_sensitivity,
    homeloc_published,
]


def build_assets(settings: Settings) -> list:
    """The assets for ``settings``: per region layer the batch step gains two assets, the
    landscape two, and the reports one."""
    layers = settings.layer_specs
    if not layers:
        return ASSETS
    out = [make_batch_assets(layers) if a is user_batch_assets else a for a in ASSETS
           if a not in LANDSCAPE_ASSETS]
    return [*out, *make_landscape_assets(layers), *make_layer_reports(layers)]


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    """Definitions for ``settings`` (default: from the ``HOMELOC_*`` environment)."""
    from_env = settings is None
    settings = settings or Settings.from_env()
    return dg.Definitions(
        assets=build_assets(settings),
        sensors=SENSORS,
        schedules=SCHEDULES,
        jobs=JOBS,
        resources={
            "homeloc": HomelocConfig.from_settings(settings),
            "hll_backend": HllBackendResource.from_settings(settings, env_vars=from_env),
            "io_manager": HomelocIOManager(base_dir=str(settings.tables_path)),
        },
    )


defs = build_definitions()

__all__ = ["ASSETS", "build_definitions", "defs", "user_batches"]
