"""The nightly heal: exactly the batches that are neither materialized nor in flight."""

from __future__ import annotations

import datetime as dt
import uuid

import dagster as dg
import pytest

from homeloc_assets.defs import jobs, schedules
from homeloc_assets.defs.resources import HomelocConfig
from homeloc_tests.helpers import write_csv


@pytest.fixture()
def env(tmp_path):
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    cfg = HomelocConfig(input_dir=str(inbox), output_dir=str(out),
                        storage_dir=str(out / ".homeloc"), batch_users=10)
    return inbox, cfg, dg.DagsterInstance.ephemeral()


def materialize(instance, keys):
    for k in keys:
        instance.report_runless_asset_event(dg.AssetMaterialization("user_home_locations", partition=k))


def add_run(instance, status, first, last):
    instance.add_run(dg.DagsterRun(
        job_name=jobs.homeloc_batches_job.name, run_id=str(uuid.uuid4()), status=status,
        tags={jobs.RANGE_START_TAG: first, jobs.RANGE_END_TAG: last},
    ))


def covered(reqs) -> list[str]:
    return [(r.tags[jobs.RANGE_START_TAG], r.tags[jobs.RANGE_END_TAG]) for r in reqs]


def test_heal_requests_exactly_the_missing_batches(env):
    inbox, cfg, instance = env
    write_csv(inbox / "a.csv", users=400)
    _, keys = cfg.catalog.register(inbox / "a.csv", cfg.batch_users)
    assert len(keys) == 40
    instance.add_dynamic_partitions("user_batches", keys)
    # done: 0-9 and 12-29 and 39; failed (no materialization): 10, 11, 30-38
    materialize(instance, keys[:10] + keys[12:30] + keys[39:])
    # 33-34 are being computed right now: not requested twice
    add_run(instance, dg.DagsterRunStatus.STARTED, keys[33], keys[34])
    # a finished run covering 30-32 does not count as in flight
    add_run(instance, dg.DagsterRunStatus.FAILURE, keys[30], keys[32])
    reqs = schedules.heal_requests(instance, cfg, "20260101T0200")
    assert covered(reqs) == [(keys[10], keys[11]), (keys[30], keys[32]), (keys[35], keys[38])]
    assert [r.run_key for r in reqs][0] == f"heal:20260101T0200:{keys[10]}..{keys[11]}"
    assert all(r.job_name == jobs.homeloc_batches_job.name for r in reqs)
    # resume: batches a crashed run finished are kept
    assert all(r.run_config["ops"]["user_batch_assets"]["config"]["reuse_finished"] for r in reqs)


def test_heal_cuts_long_gaps_into_runs_of_16(env):
    inbox, cfg, instance = env
    write_csv(inbox / "a.csv", users=400)
    _, keys = cfg.catalog.register(inbox / "a.csv", cfg.batch_users)
    instance.add_dynamic_partitions("user_batches", keys)
    reqs = schedules.heal_requests(instance, cfg, "x")
    assert covered(reqs) == [(keys[0], keys[15]), (keys[16], keys[31]), (keys[32], keys[39])]


def test_heal_registers_files_the_sensor_missed(env):
    inbox, cfg, instance = env
    write_csv(inbox / "a.csv", users=30)
    reqs = schedules.heal_requests(instance, cfg, "x")
    keys = list(instance.get_dynamic_partitions("user_batches"))
    assert keys and covered(reqs) == [(keys[0], keys[-1])]


def test_schedule_skips_when_everything_is_done(env, tmp_path):
    from dagster._core.instance.ref import InstanceRef

    inbox, cfg, _ = env
    # a schedule context needs an instance with a ref (an ephemeral one has none)
    (tmp_path / "home").mkdir()
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path / "home"))) as instance:
        _check_schedule(inbox, cfg, instance)


def _check_schedule(inbox, cfg, instance):
    write_csv(inbox / "a.csv", users=30)
    _, keys = cfg.catalog.register(inbox / "a.csv", cfg.batch_users)
    instance.add_dynamic_partitions("user_batches", keys)
    materialize(instance, keys[:-1])
    when = dt.datetime(2026, 1, 2, 2, 0, tzinfo=dt.UTC)
    ctx = dg.build_schedule_context(instance=instance, scheduled_execution_time=when,
                                    resources={"homeloc": cfg})
    reqs = schedules.homeloc_nightly_heal(ctx)
    assert covered(reqs) == [(keys[-1], keys[-1])]
    assert reqs[0].run_key == f"heal:20260102T0200:{keys[-1]}..{keys[-1]}"
    materialize(instance, keys[-1:])
    ctx = dg.build_schedule_context(instance=instance, scheduled_execution_time=when,
                                    resources={"homeloc": cfg})
    assert isinstance(schedules.homeloc_nightly_heal(ctx), dg.SkipReason)


def test_definitions_wire_sensor_schedule_jobs():
    from homeloc_assets.definitions import build_definitions

    with dg.instance_for_test():  # loading definitions looks up the current instance
        repo = build_definitions().get_repository_def()
    sensors = {s.name: s for s in repo.sensor_defs}
    assert sensors["homeloc_input_sensor"].default_status == dg.DefaultSensorStatus.RUNNING
    assert sensors["homeloc_automation"].default_status == dg.DefaultSensorStatus.RUNNING
    # our automation sensor covers every asset, so Dagster adds no (stopped) default one
    assert "default_automation_condition_sensor" not in sensors
    sched = repo.get_schedule_def("homeloc_nightly_heal")
    assert sched.cron_schedule == "0 2 * * *"
    assert sched.default_status == dg.DefaultScheduleStatus.RUNNING
    graph = repo.asset_graph
    for key in ("user_classification", "homeloc_exports"):
        assert graph.get(dg.AssetKey(key)).automation_condition is not None
    job = repo.get_job(jobs.homeloc_batches_job.name)
    # the heal job runs the four assets of the batch step and nothing downstream of them
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == {
        "user_locations", "user_country_userdays", "user_home_locations", "rejected_rows"}
