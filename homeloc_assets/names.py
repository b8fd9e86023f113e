"""The names of homeloc's assets and steps: defined here once, used by the definitions, the
batch workers, the jobs and the CLI. No Dagster here.

The per-region-layer names (``user_<kind>_<layer>``, ``landscape_..._<layer>``) are
made by ``geo.layers.layer_assets`` and ``defs.landscape.layer_landscape_assets``.
"""

from __future__ import annotations

WORLD_COUNTRIES = "world_countries"
COUNTRIES = "countries"
#: the country polygons every batch needs
COUNTRY_ASSETS = (WORLD_COUNTRIES, COUNTRIES)

USER_LOCATIONS = "user_locations"
USER_COUNTRY_USERDAYS = "user_country_userdays"
USER_HOME_LOCATIONS = "user_home_locations"
REJECTED_ROWS = "rejected_rows"
#: the four tables every batch makes, in this order (region layers add two each)
BATCH_ASSETS = (USER_LOCATIONS, USER_COUNTRY_USERDAYS, USER_HOME_LOCATIONS, REJECTED_ROWS)
#: the step (op) that makes the batch tables: its run config is ``ops.<BATCH_STEP>``
BATCH_STEP = "user_batch_assets"

USER_CLASSIFICATION = "user_classification"
HOMELOC_EXPORTS = "homeloc_exports"
HOME_RULE_SENSITIVITY = "home_rule_sensitivity"
#: the step that publishes a classification's files as one set (its config: figures, landscape)
HOMELOC_PUBLISHED = "homeloc_published"

LANDSCAPE_BATCH_CELLS = "landscape_batch_cells"
#: the step that makes the per-batch landscape tables (cells and per layer)
LANDSCAPE_BATCH_STEP = "landscape_batch_assets"
LANDSCAPE_CELLS = "landscape_cells"
