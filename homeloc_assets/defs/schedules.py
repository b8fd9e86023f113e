"""The schedule: ``homeloc_nightly_heal`` (02:00 by default) re-checks the input folder
and requests runs for every registered batch that is neither materialized nor in flight,
so a crash overnight heals itself.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Sequence

import dagster as dg

from homeloc_assets.defs.batches import user_batches
from homeloc_assets.defs.jobs import (
    HOME_KEY,
    IN_FLIGHT,
    RANGE_END_TAG,
    RANGE_START_TAG,
    homeloc_batches_job,
    range_run_request,
)
from homeloc_assets.defs.resources import HomelocConfig
from homeloc_assets.defs.sensors import SETTLE_SECONDS
from homeloc_assets.inputs import InputError
from homeloc_assets.inputs.folder import consecutive_ranges, scan_input_dir
from homeloc_assets.settings import Settings

#: the heal's schedule (``HOMELOC_HEAL_*``), fixed when the definitions load
_OPS = Settings.from_env()
#: Cron of the nightly heal, in HOMELOC_HEAL_TIMEZONE (default UTC, not the server's zone).
HEAL_CRON = _OPS.heal_cron
HEAL_TIMEZONE = _OPS.heal_timezone
#: Runs that started longer ago than this are not counted as "in flight" by the heal
#: (the default run launcher cannot tell a dead run process after a machine crash).
HEAL_STALE_RUN_SECONDS = 12 * 3600


def in_flight_keys(instance: dg.DagsterInstance, order: Sequence[str], now: float) -> set[str]:
    """Batches covered by queued or running batch runs (runs started long ago count as dead)."""
    index = {k: i for i, k in enumerate(order)}
    out: set[str] = set()
    for rec in instance.get_run_records(
        dg.RunsFilter(job_name=homeloc_batches_job.name, statuses=IN_FLIGHT)
    ):
        run = rec.dagster_run
        started = rec.start_time
        if run.status == dg.DagsterRunStatus.STARTED and started and now - started > HEAL_STALE_RUN_SECONDS:
            continue
        tags = run.tags
        lo, hi = tags.get(RANGE_START_TAG), tags.get(RANGE_END_TAG)
        if lo in index and hi in index:
            out.update(order[index[lo] : index[hi] + 1])
        elif tags.get("dagster/partition") in index:
            out.add(tags["dagster/partition"])
    return out


def heal_requests(
    instance: dg.DagsterInstance, homeloc: HomelocConfig, stamp: str, now: float | None = None,
    log=None,
) -> list[dg.RunRequest]:
    """Register stable files the sensor has not, then one run per range of missing batches."""
    now = time.time() if now is None else now
    found, _ = scan_input_dir(homeloc.input_dir)
    have = set(instance.get_dynamic_partitions(user_batches.name))
    for cand in found.values():
        if now - cand.mtime_ns / 1e9 < SETTLE_SECONDS:
            continue
        try:
            _, keys = homeloc.catalog.register(cand.path, homeloc.batch_users)
        except (InputError, OSError, ValueError):
            continue
        new = [k for k in keys if k not in have]
        if new:
            # the sensor normally did this; after a sensor outage the schedule catches up
            instance.add_dynamic_partitions(user_batches.name, new)
            have.update(new)
            if log:
                log.info(f"{cand.name}: added {len(new)} batch(es) the sensor had not registered")
    order = list(instance.get_dynamic_partitions(user_batches.name))
    done = set(instance.get_materialized_partitions(HOME_KEY))
    busy = in_flight_keys(instance, order, now)
    missing = [k for k in order if k not in done and k not in busy]
    return [
        range_run_request(part, f"heal:{stamp}:{part[0]}..{part[-1]}", reuse_finished=True,
                          tags={"homeloc/heal": stamp})
        for part in consecutive_ranges(missing, order)
    ]


@dg.schedule(
    name="homeloc_nightly_heal",
    cron_schedule=HEAL_CRON,
    execution_timezone=HEAL_TIMEZONE,
    job=homeloc_batches_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=(
        "Nightly: registers stable inputs the sensor missed and requests runs for every batch "
        "that is neither materialized nor in flight (a crash overnight heals itself)."
    ),
)
def homeloc_nightly_heal(context: dg.ScheduleEvaluationContext, homeloc: HomelocConfig):
    """See :func:`heal_requests`."""
    when = context.scheduled_execution_time or _dt.datetime.now(_dt.UTC)
    reqs = heal_requests(context.instance, homeloc, when.strftime("%Y%m%dT%H%M"), log=context.log)
    if not reqs:
        return dg.SkipReason("every registered batch is materialized or in flight")
    return reqs


SCHEDULES: list = [homeloc_nightly_heal]
