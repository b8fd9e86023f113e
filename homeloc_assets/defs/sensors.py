"""The sensors: the input folder's and the automation conditions'.

* ``homeloc_input_sensor`` watches ``HOMELOC_INPUT_DIR`` (``*.csv``, not
  recursive). A file is registered once it is *stable*: the same size and
  mtime on two ticks and an mtime at least ``HOMELOC_SENSOR_SETTLE_SECONDS``
  old. Registering plans the file by seeking only (``Catalog.register``), adds
  its batches as ``user_batches`` partitions and requests one run per range of
  up to 16 batches (run key ``<plan_id>:<first>..<last>``). A changed or
  removed file retires the partitions of its old plan first, so old and new
  data never mix.
* ``homeloc_automation`` evaluates ``AutomationCondition.eager()`` of
  ``user_classification``, ``homeloc_exports`` (and any other asset with an
  automation condition): once every batch is materialized they update. The
  landscape follows the same way: ``landscape_batch_cells`` (and the per-layer
  ``landscape_batch_layer_<NAME>``) for every batch once the classification
  exists or changes (ranges of up to 16 batches per run, their backfill
  policy), then ``landscape_cells``, its maps and ``landscape_layer_<NAME>``.

The folder logic needs no Dagster (``homeloc_assets.inputs.folder``); the cursor of
the sensor is JSON (see :class:`homeloc_assets.inputs.folder.Cursor`).
"""

from __future__ import annotations

import os
import time

import dagster as dg

from homeloc_assets.catalog import split_key
from homeloc_assets.defs.batches import BACKFILL_BATCHES_PER_RUN, user_batches
from homeloc_assets.defs.jobs import (
    COUNTRIES_KEY,
    HOME_KEY,
    IN_FLIGHT,
    PLAN_TAG,
    homeloc_batches_job,
    homeloc_countries_job,
    homeloc_results_job,
    range_run_request,
)
from homeloc_assets.defs.resources import HomelocConfig
from homeloc_assets.inputs import InputError
from homeloc_assets.inputs.folder import (
    Cursor,
    consecutive_ranges,
    plan_keys,
    scan_input_dir,
    watching_message,
)
from homeloc_assets.settings import Settings

#: sensor timing (``HOMELOC_SENSOR_*``, ``HOMELOC_AUTOMATION_*``), fixed when the definitions load
_OPS = Settings.from_env()
#: Seconds between input sensor ticks.
SENSOR_INTERVAL_SECONDS = _OPS.sensor_interval_seconds
#: A file's mtime must be at least this old before it is registered.
SETTLE_SECONDS = _OPS.sensor_settle_seconds
#: Seconds between evaluations of the automation conditions.
AUTOMATION_INTERVAL_SECONDS = _OPS.automation_interval_seconds
#: Re-request the countries run after a failure at most this often.
COUNTRIES_RETRY_SECONDS = 600


def _countries_state(instance: dg.DagsterInstance) -> str:
    """``ready`` (materialized), ``running`` (a run in flight) or ``missing``."""
    if instance.get_latest_materialization_event(COUNTRIES_KEY) is not None:
        return "ready"
    runs = instance.get_run_records(
        dg.RunsFilter(job_name=homeloc_countries_job.name, statuses=IN_FLIGHT), limit=1
    )
    return "running" if runs else "missing"


def evaluate_input_folder(
    context: dg.SensorEvaluationContext, homeloc: HomelocConfig, now: float | None = None
) -> dg.SensorResult:
    """One tick of the input sensor (a plain function so tests can call it with a clock)."""
    now = time.time() if now is None else now
    instance = context.instance
    cursor = Cursor(context.cursor)
    catalog = homeloc.catalog
    found, ignored = scan_input_dir(homeloc.input_dir)
    for name in ignored:
        if name not in cursor.files or cursor.files[name].get("state") != "ignored":
            context.log.warning(
                f"{name}: ignored (a symlink leaving {homeloc.input_dir}, dangling, or not a "
                "regular file)"
            )
    existing = list(instance.get_dynamic_partitions(user_batches.name))
    retire: list[str] = []
    add: list[str] = []
    runs: list[dg.RunRequest] = []
    refresh_results = False
    new_files: dict[str, dict] = {}

    # files that are gone (or now ignored): retire their partitions
    for name, entry in cursor.files.items():
        if name in found or entry.get("state") != "registered":
            continue
        keys = catalog.keys_to_retire(existing, plan_ids=[entry["plan_id"]])
        if keys:
            context.log.info(f"{name}: removed; retiring {len(keys)} batch(es) of {entry['plan_id']}")
            retire += keys
            refresh_results = True
    for name in ignored:
        new_files[name] = {"state": "ignored"}

    for name, cand in found.items():
        entry = dict(cursor.files.get(name) or {})
        same = entry.get("size") == cand.size and entry.get("mtime_ns") == cand.mtime_ns
        if same and entry.get("state") in ("registered", "rejected"):
            new_files[name] = entry
            continue
        if not same:
            # new or changed: the old plan's batches are no longer true
            if entry.get("state") == "registered":
                keys = catalog.keys_to_retire(existing, plan_ids=[entry["plan_id"]])
                if keys:
                    context.log.info(
                        f"{name}: changed; retiring {len(keys)} batch(es) of {entry['plan_id']}"
                    )
                    retire += keys
            new_files[name] = {
                "state": "seen", "size": cand.size, "mtime_ns": cand.mtime_ns,
                "prev_plan": entry.get("plan_id") or entry.get("prev_plan"),
            }
            continue
        # unchanged since the last tick: register once it is old enough
        if now - cand.mtime_ns / 1e9 < SETTLE_SECONDS:
            new_files[name] = entry
            continue
        if name.lower().endswith(".gz"):
            # decompressing gigabytes does not fit in a sensor tick: say what to do, once
            msg = (f"compressed inputs are not watched: decompress it into the folder "
                   f"(gunzip -k {name}), or run `homeloc run --input {cand.path}`")
            context.log.warning(f"{name}: {msg}")
            new_files[name] = {**entry, "state": "rejected", "error": msg}
            continue
        try:
            # a file `homeloc run` planned (any --batch-users) keeps its batches
            plan_id, keys = (catalog.dataset_plan_of(cand.path, cand.size, cand.mtime_ns)
                             or catalog.register(cand.path, homeloc.batch_users))
        except (InputError, OSError, ValueError) as exc:
            context.log.warning(f"{name}: not registered: {exc}")
            new_files[name] = {**entry, "state": "rejected", "error": str(exc)[:500]}
            continue
        try:
            after = os.stat(cand.path)
        except OSError:
            continue
        if (after.st_size, after.st_mtime_ns) != (cand.size, cand.mtime_ns):
            new_files[name] = {"state": "seen", "size": after.st_size,
                               "mtime_ns": after.st_mtime_ns, "prev_plan": entry.get("prev_plan")}
            continue
        old = catalog.keys_to_retire(existing, paths=[cand.path], keep_plan=plan_id)
        if old:
            context.log.info(f"{name}: retiring {len(old)} batch(es) of older versions")
            retire += old
        have = set(existing) | set(add)
        add += [k for k in keys if k not in have]
        rewritten = entry.get("prev_plan") == plan_id
        new_files[name] = {
            "state": "registered", "size": cand.size, "mtime_ns": cand.mtime_ns,
            "plan_id": plan_id, "n": len(keys), "first": keys[0], "last": keys[-1],
            "requested": False, "rerun": bool(rewritten),
        }
        context.log.info(f"{name}: registered as {plan_id} with {len(keys)} batch(es)")

    # launch the runs of registered files (after the countries exist)
    pending = {n: e for n, e in new_files.items()
               if e.get("state") == "registered" and not e.get("requested")}
    countries = _countries_state(instance) if pending else "ready"
    if pending and countries == "missing" and now - cursor.countries_requested_at >= COUNTRIES_RETRY_SECONDS:
        runs.append(dg.RunRequest(run_key=None, job_name=homeloc_countries_job.name))
        cursor.countries_requested_at = now
    if pending and countries == "ready":
        materialized = instance.get_materialized_partitions(HOME_KEY)
        for entry in pending.values():
            keys = plan_keys(entry)
            todo = keys if entry.get("rerun") else [k for k in keys if k not in materialized]
            suffix = f"@{entry['mtime_ns']}" if entry.get("rerun") else ""
            for part in consecutive_ranges(todo, keys):
                runs.append(range_run_request(
                    part, f"{entry['plan_id']}{suffix}:{part[0]}..{part[-1]}",
                    tags={PLAN_TAG: entry["plan_id"]},
                ))
            entry["requested"] = True

    if refresh_results and not add:
        left = [k for k in existing if k not in set(retire)]
        if left and set(left) <= set(instance.get_materialized_partitions(HOME_KEY)):
            runs.append(dg.RunRequest(
                run_key=f"refresh:{','.join(sorted({split_key(k)[0] for k in retire}))}",
                job_name=homeloc_results_job.name,
            ))

    # the folder is one data set: the results describe every registered file of it together
    plans = sorted({e["plan_id"] for e in new_files.values() if e.get("state") == "registered"})
    source = f"input sensor ({homeloc.input_dir})"
    if plans or catalog.dataset_source() == source:
        catalog.set_dataset(plans, source)
    cursor.files = new_files
    requests: list = []
    if retire:
        requests.append(dg.DeleteDynamicPartitionsRequest(user_batches.name, sorted(set(retire))))
    if add:
        requests.append(dg.AddDynamicPartitionsRequest(user_batches.name, add))
    return dg.SensorResult(
        run_requests=runs, dynamic_partitions_requests=requests, cursor=cursor.dumps(),
        skip_reason=None if runs or requests else watching_message(homeloc.input_dir, new_files),
    )


@dg.sensor(
    name="homeloc_input_sensor",
    jobs=[homeloc_batches_job, homeloc_countries_job, homeloc_results_job],
    minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Registers new or changed CSVs in HOMELOC_INPUT_DIR as user_batches partitions once "
        "they are stable, retires the batches of changed or removed files, and requests one "
        f"run per range of up to {BACKFILL_BATCHES_PER_RUN} batches."
    ),
)
def homeloc_input_sensor(context: dg.SensorEvaluationContext, homeloc: HomelocConfig):
    """See :func:`evaluate_input_folder`."""
    return evaluate_input_folder(context, homeloc)


homeloc_automation = dg.AutomationConditionSensorDefinition(
    "homeloc_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=AUTOMATION_INTERVAL_SECONDS,
    description=(
        "Evaluates the automation conditions (eager: user_classification, homeloc_exports, "
        "reports, the landscape) — running by default, unlike Dagster's default automation "
        "sensor."
    ),
)


SENSORS: list = [homeloc_input_sensor, homeloc_automation]
