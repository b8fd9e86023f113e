"""The input sensor after ``homeloc run --batch-users N`` on a file of the watched folder.

Found by the UI walk (``test_ui_walk.py``): ``homeloc run --input F
--batch-users 1500`` then ``homeloc ui --input F`` — the sensor re-planned F
with its own batch size (``HOMELOC_BATCH_USERS``, default), retired the run's
two partitions and launched a batch run and the whole automation again for an
unchanged file. It now keeps the data set's plan of a file that is as it was
planned; a file that changed is planned anew with the sensor's size.
"""

from __future__ import annotations

import dagster as dg
import pytest

from homeloc_assets.catalog import Catalog
from homeloc_assets.defs import sensors
from homeloc_assets.defs.resources import HomelocConfig
from homeloc_assets.inputs.folder import watching_message
from homeloc_tests.helpers import write_csv

pytestmark = pytest.mark.heavy  # CI time: make test must stay under 15 minutes


def _tick(instance, cfg, cursor):
    res = sensors.evaluate_input_folder(dg.build_sensor_context(instance=instance, cursor=cursor), cfg)
    for req in res.dynamic_partitions_requests or []:
        if isinstance(req, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(req.partitions_def_name, req.partition_keys)
        else:
            for k in req.partition_keys:
                instance.delete_dynamic_partition(req.partitions_def_name, k)
    return res


def _after_run(tmp_path, users: int = 40, run_batch: int = 10):
    """The state ``homeloc run --batch-users run_batch`` leaves: plan, data set, materialised batches."""
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    csv = write_csv(inbox / "a.csv", users=users)
    cfg = HomelocConfig(input_dir=str(inbox), output_dir=str(out),
                        storage_dir=str(out / ".homeloc"), batch_users=1000)  # the UI's size
    catalog = Catalog(out / ".homeloc")
    plan_id, keys = catalog.register(csv, run_batch)
    catalog.set_dataset([plan_id], source="homeloc run")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("user_batches", keys)
    instance.report_runless_asset_event(dg.AssetMaterialization("countries"))
    for k in keys:
        instance.report_runless_asset_event(
            dg.AssetMaterialization("user_home_locations", partition=k))
    return csv, cfg, instance, plan_id, keys


def test_sensor_keeps_the_batches_of_the_run(tmp_path):
    _, cfg, instance, plan_id, keys = _after_run(tmp_path)
    assert len(keys) == 4
    cursor = None
    for _ in range(3):  # seen, registered, quiet
        res = _tick(instance, cfg, cursor)
        cursor = res.cursor
        assert not res.run_requests, res.run_requests
        assert not any(isinstance(r, dg.DeleteDynamicPartitionsRequest)
                       for r in res.dynamic_partitions_requests or [])
    assert list(instance.get_dynamic_partitions("user_batches")) == keys
    assert res.skip_reason.skip_message == watching_message(
        cfg.input_dir, {"a.csv": {"state": "registered"}})


def test_a_changed_file_is_planned_with_the_sensors_size(tmp_path):
    csv, cfg, instance, plan_id, keys = _after_run(tmp_path)
    write_csv(csv, users=50)  # rewritten: a new size and mtime
    cursor = None
    for _ in range(2):
        res = _tick(instance, cfg, cursor)
        cursor = res.cursor
    now = list(instance.get_dynamic_partitions("user_batches"))
    assert len(now) == 1 and not set(now) & set(keys)  # 50 users in one batch of 1000
    assert len(res.run_requests) == 1
