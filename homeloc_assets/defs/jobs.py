"""Jobs of homeloc and how their runs are requested: tags, run config, range runs.

* ``homeloc_batches_job``: the per-batch assets for a range of batches (one run, all cores);
* ``homeloc_countries_job``: the country polygons, once before the first batches;
* ``homeloc_results_job``: classification, exports and reports over all current batches.

The input sensor (``defs.sensors``), the nightly heal (``defs.schedules``) and
``homeloc run`` request runs with :func:`range_run_request`, :func:`range_tags` and
:func:`batch_run_config`.
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from homeloc_assets.names import (
    BATCH_ASSETS,
    BATCH_STEP,
    COUNTRIES,
    COUNTRY_ASSETS,
    USER_CLASSIFICATION,
    USER_HOME_LOCATIONS,
)

HOME_KEY = dg.AssetKey(USER_HOME_LOCATIONS)
COUNTRIES_KEY = dg.AssetKey(COUNTRIES)

PLAN_TAG = "homeloc/plan_id"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"

#: run statuses of a run that is queued or running
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]

homeloc_batches_job = dg.define_asset_job(
    "homeloc_batches_job",
    selection=dg.AssetSelection.assets(*BATCH_ASSETS),
    description="The per-batch assets for a range of user batches (one run: all cores).",
)

homeloc_countries_job = dg.define_asset_job(
    "homeloc_countries_job",
    selection=dg.AssetSelection.assets(*COUNTRY_ASSETS),
    description="The country polygons every batch needs (run once, before the first batches).",
)

homeloc_results_job = dg.define_asset_job(
    "homeloc_results_job",
    # the landscape is partitioned by batch: it runs with its own partition range (or by
    # its eager automation condition)
    selection=dg.AssetSelection.assets(USER_CLASSIFICATION).downstream()
    - dg.AssetSelection.groups("landscape"),
    description="Classification, exports and reports over all current batches.",
)


def batch_run_config(reuse_finished: bool) -> dict:
    """The run config of a run of the batch step (``BatchRunConfig``)."""
    return {"ops": {BATCH_STEP: {"config": {"reuse_finished": reuse_finished}}}}


def range_tags(keys: Sequence[str]) -> dict[str, str]:
    """The tags of a run over the consecutive batches ``keys[0]..keys[-1]``."""
    return {RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]}


def range_run_request(
    keys: Sequence[str], run_key: str, *, reuse_finished: bool = False, tags: dict | None = None
) -> dg.RunRequest:
    """One run of ``homeloc_batches_job`` over the consecutive batches ``keys[0]..keys[-1]``."""
    return dg.RunRequest(
        run_key=run_key,
        job_name=homeloc_batches_job.name,
        run_config=batch_run_config(reuse_finished),
        tags={**range_tags(keys), **(tags or {})},
    )


JOBS: list = [homeloc_batches_job, homeloc_countries_job, homeloc_results_job]
