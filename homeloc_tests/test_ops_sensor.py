"""The input sensor's decisions, tick by tick, against an ephemeral instance.

The daemon applies a ``SensorResult``'s dynamic-partition requests before it
launches the runs; ``apply`` does the same here. The clock is passed in, so the
"old enough" rule is tested without sleeping.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from homeloc_assets.defs import jobs, sensors
from homeloc_assets.defs.resources import HomelocConfig
from homeloc_assets.inputs.folder import scan_input_dir
from homeloc_tests.helpers import set_age, write_csv

HLL = r"\x128b7fb864f58a7c9c7b22c55fbdadd4c9c52911534ef0e7e557f021d42cf35cc94201"
HEADER = "user_guid,latitude,longitude,userday_hll\n"


@pytest.fixture()
def env(tmp_path):
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    cfg = HomelocConfig(input_dir=str(inbox), output_dir=str(out),
                        storage_dir=str(out / ".homeloc"), batch_users=10)
    instance = dg.DagsterInstance.ephemeral()
    return inbox, cfg, instance


class Ticker:
    """Runs ticks like the daemon: cursor carried over, partition requests applied."""

    def __init__(self, instance, cfg, countries_ready: bool = True) -> None:
        self.instance, self.cfg, self.cursor = instance, cfg, None
        if countries_ready:
            instance.report_runless_asset_event(dg.AssetMaterialization("countries"))

    def tick(self, now: float | None = None) -> dg.SensorResult:
        ctx = dg.build_sensor_context(instance=self.instance, cursor=self.cursor)
        res = sensors.evaluate_input_folder(ctx, self.cfg, now=now)
        for req in res.dynamic_partitions_requests or []:
            if isinstance(req, dg.AddDynamicPartitionsRequest):
                self.instance.add_dynamic_partitions(req.partitions_def_name, req.partition_keys)
            else:
                for k in req.partition_keys:
                    self.instance.delete_dynamic_partition(req.partitions_def_name, k)
        self.cursor = res.cursor
        return res

    @property
    def keys(self) -> list[str]:
        return list(self.instance.get_dynamic_partitions("user_batches"))


def batch_runs(res: dg.SensorResult) -> list[dg.RunRequest]:
    return [r for r in res.run_requests if r.job_name == jobs.homeloc_batches_job.name]


def ranges(res: dg.SensorResult) -> list[tuple[str, str]]:
    return [(r.tags[jobs.RANGE_START_TAG], r.tags[jobs.RANGE_END_TAG]) for r in batch_runs(res)]


def test_new_file_registered_on_second_tick_in_ranges_of_16(env):
    inbox, cfg, instance = env
    write_csv(inbox / "a.csv", users=400)  # 40 batches of 10 users
    t = Ticker(instance, cfg)
    first = t.tick()
    assert not first.run_requests and not first.dynamic_partitions_requests
    assert json.loads(first.cursor)["files"]["a.csv"]["state"] == "seen"
    second = t.tick()
    keys = t.keys
    assert len(keys) == 40 and keys == sorted(keys)
    runs = batch_runs(second)
    assert len(runs) == 3  # 16 + 16 + 8
    assert ranges(second) == [(keys[0], keys[15]), (keys[16], keys[31]), (keys[32], keys[39])]
    plan_id = keys[0].rpartition("-")[0]
    assert [r.run_key for r in runs] == [f"{plan_id}:{a}..{b}" for a, b in ranges(second)]
    assert all(r.run_config["ops"]["user_batch_assets"]["config"]["reuse_finished"] is False
               for r in runs)
    # nothing new on the next tick; the cursor is JSON
    third = t.tick()
    assert not third.run_requests and not third.dynamic_partitions_requests
    doc = json.loads(third.cursor)
    assert doc["files"]["a.csv"]["state"] == "registered"
    assert doc["files"]["a.csv"]["plan_id"] == plan_id


def test_decorated_sensor_with_resources(env):
    inbox, cfg, instance = env
    write_csv(inbox / "a.csv", users=50)
    instance.report_runless_asset_event(dg.AssetMaterialization("countries"))
    cursor = None
    for _ in range(2):
        ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"homeloc": cfg})
        res = sensors.homeloc_input_sensor(ctx)
        cursor = res.cursor
    assert len(batch_runs(res)) == 1
    assert isinstance(res.dynamic_partitions_requests[0], dg.AddDynamicPartitionsRequest)
    assert len(res.dynamic_partitions_requests[0].partition_keys) == 5


def test_growing_file_waits_until_stable_and_old_enough(env):
    inbox, cfg, instance = env
    path = write_csv(inbox / "g.csv", users=30, age=0)
    t = Ticker(instance, cfg)
    assert not t.tick().dynamic_partitions_requests  # first sight
    with open(path, "a") as fh:  # still being written
        fh.write(f"{10**6:032x},52.5,13.4,{HLL}\n")
    assert not t.tick().dynamic_partitions_requests  # changed since last tick
    # unchanged now, but its mtime is too recent
    assert not t.tick(now=time.time()).dynamic_partitions_requests
    assert t.keys == []
    res = t.tick(now=time.time() + sensors.SETTLE_SECONDS + 1)
    assert t.keys and ranges(res) == [(t.keys[0], t.keys[-1])]


def test_countries_first_then_batches(env):
    inbox, cfg, instance = env
    write_csv(inbox / "a.csv", users=50)
    t = Ticker(instance, cfg, countries_ready=False)
    t.tick()
    res = t.tick()
    assert len(t.keys) == 5  # registered ...
    assert [r.job_name for r in res.run_requests] == [jobs.homeloc_countries_job.name]  # ... but waits
    assert not t.tick().run_requests  # no second countries run while the first one is recent
    instance.report_runless_asset_event(dg.AssetMaterialization("countries"))
    res = t.tick()
    assert len(batch_runs(res)) == 1 and ranges(res) == [(t.keys[0], t.keys[-1])]
    assert not t.tick().run_requests


def test_changed_file_retires_old_batches_then_adds_new(env):
    inbox, cfg, instance = env
    path = write_csv(inbox / "a.csv", users=50)
    t = Ticker(instance, cfg)
    t.tick()
    t.tick()
    old = t.keys
    assert len(old) == 5
    write_csv(path, users=70, start=1000)  # a new version of the same file
    res = t.tick()
    deletes = [r for r in res.dynamic_partitions_requests if isinstance(r, dg.DeleteDynamicPartitionsRequest)]
    assert len(deletes) == 1 and sorted(deletes[0].partition_keys) == sorted(old)
    assert t.keys == [] and not res.run_requests  # old gone at once; new not yet stable
    res = t.tick()
    new = t.keys
    assert len(new) == 7 and not set(new) & set(old)
    assert ranges(res) == [(new[0], new[-1])]


def test_rewritten_file_with_same_fingerprint_gets_new_keys_and_is_recomputed(env):
    inbox, cfg, instance = env
    path = write_csv(inbox / "a.csv", users=50)
    t = Ticker(instance, cfg)
    t.tick()
    first = t.tick()
    keys = t.keys
    for k in keys:
        instance.report_runless_asset_event(dg.AssetMaterialization("user_home_locations", partition=k))
    set_age(path, 1800)  # touched (or rewritten keeping size, head and tail)
    t.tick()
    res = t.tick()
    assert len(t.keys) == len(keys) and not set(t.keys) & set(keys)  # new plan, new keys
    assert len(batch_runs(res)) == 1
    assert batch_runs(res)[0].run_key != batch_runs(first)[0].run_key  # a new run, not deduplicated


def test_removed_file_retires_batches_and_refreshes_results(env):
    inbox, cfg, instance = env
    write_csv(inbox / "a.csv", users=30)
    b = write_csv(inbox / "b.csv", users=20, start=500)
    t = Ticker(instance, cfg)
    t.tick()
    t.tick()
    assert len(t.keys) == 5
    for k in t.keys:
        instance.report_runless_asset_event(dg.AssetMaterialization("user_home_locations", partition=k))
    b_keys = [k for k in t.keys if k.startswith("b-")]
    b.unlink()
    res = t.tick()
    deletes = [r for r in res.dynamic_partitions_requests if isinstance(r, dg.DeleteDynamicPartitionsRequest)]
    assert sorted(deletes[0].partition_keys) == sorted(b_keys)
    assert all(k.startswith("a-") for k in t.keys) and len(t.keys) == 3
    assert [r.job_name for r in res.run_requests] == [jobs.homeloc_results_job.name]
    assert "b.csv" not in json.loads(res.cursor)["files"]


def test_the_folder_is_one_data_set_of_its_registered_files(env):
    """The results describe every registered file of the folder together, and only them."""
    from homeloc_assets.catalog import Catalog

    inbox, cfg, instance = env
    catalog = Catalog(cfg.storage_dir)
    catalog.set_dataset(["earlier_run-0000abcd"], source="homeloc run")
    write_csv(inbox / "a.csv", users=30)
    b = write_csv(inbox / "b.csv", users=20, start=500)
    t = Ticker(instance, cfg)
    t.tick()
    assert catalog.dataset() == ["earlier_run-0000abcd"]  # nothing registered yet: unchanged
    t.tick()
    plans = sorted({k.rpartition("-")[0] for k in t.keys})
    assert len(plans) == 2 and catalog.dataset() == plans
    assert catalog.dataset_source() == f"input sensor ({inbox})"
    b.unlink()
    t.tick()
    assert catalog.dataset() == [p for p in plans if p.startswith("a-")]


def test_a_quiet_tick_says_what_it_watches(env):
    inbox, cfg, instance = env
    t = Ticker(instance, cfg)
    res = t.tick()
    assert res.skip_reason.skip_message == (
        f"watching {inbox}: 0 CSV file(s); put a userdays CSV there to start")
    write_csv(inbox / "a.csv", users=20)
    assert "1 CSV file(s) (1 waiting to be stable)" in t.tick(now=time.time() - 3600 * 2) \
        .skip_reason.skip_message
    t.tick()
    assert t.tick().skip_reason.skip_message == f"watching {inbox}: 1 CSV file(s) (1 registered)"


def test_a_compressed_file_is_refused_once_with_what_to_do(env, capfd):
    import gzip

    inbox, cfg, instance = env
    src = write_csv(inbox / "raw.csv", users=20)
    gz = inbox / "big.csv.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    set_age(gz, 3600)
    src.unlink()
    t = Ticker(instance, cfg)
    for _ in range(3):
        t.tick()
    warned = [ln for ln in capfd.readouterr().err.splitlines() if "big.csv.gz:" in ln]
    assert len(warned) == 1 and "gunzip -k big.csv.gz" in warned[0], warned
    assert json.loads(t.cursor)["files"]["big.csv.gz"]["state"] == "rejected" and not t.keys


def test_symlink_escaping_the_folder_is_ignored(env, tmp_path):
    inbox, cfg, instance = env
    outside = write_csv(tmp_path / "secret.csv", users=20)
    (inbox / "escape.csv").symlink_to(outside)
    (inbox / "dots.csv").symlink_to(Path("..") / "secret.csv")
    (inbox / "dangling.csv").symlink_to(inbox / "nothing.csv")
    write_csv(inbox / "real.csv", users=20)
    (inbox / "inside.csv").symlink_to(inbox / "real.csv")
    found, ignored = scan_input_dir(inbox)
    assert sorted(found) == ["real.csv"]
    # the alias inside.csv -> real.csv is skipped: one file, one plan, one set of runs
    assert sorted(ignored) == ["dangling.csv", "dots.csv", "escape.csv", "inside.csv"]
    t = Ticker(instance, cfg)
    t.tick()
    t.tick()
    assert t.keys and all(k.startswith("real-") for k in t.keys)
    # a symlink to a file inside the folder that is not itself an input counts
    (inbox / "real.csv").rename(inbox / "real.dat")
    (inbox / "inside.csv").unlink()
    (inbox / "inside.csv").symlink_to("real.dat")
    found, _ = scan_input_dir(inbox)
    assert sorted(found) == ["inside.csv"] and found["inside.csv"].path == inbox.resolve() / "real.dat"


def test_hidden_temp_and_non_regular_files_are_ignored(env):
    inbox, cfg, instance = env
    for name in (".hidden.csv", ".a.csv.x1y2.tmp", "a.csv.part", "notes.txt", "~lock.csv",
                 "sample.csv.truth.csv"):
        write_csv(inbox / name, users=10)
    (inbox / "dir.csv").mkdir()
    os.mkfifo(inbox / "pipe.csv")  # opening it would block the sensor
    found, ignored = scan_input_dir(inbox)
    assert found == {}
    assert sorted(ignored) == ["dir.csv", "pipe.csv"]
    t = Ticker(instance, cfg)
    t.tick()
    res = t.tick()
    assert t.keys == [] and not res.run_requests


def test_invalid_csv_is_rejected_once_and_not_retried_until_changed(env):
    inbox, cfg, instance = env
    bad = inbox / "not_userdays.csv"
    bad.write_text("user_guid,home_country\nx,Germany\n")
    set_age(bad, 3600)
    t = Ticker(instance, cfg)
    t.tick()
    res = t.tick()
    entry = json.loads(res.cursor)["files"]["not_userdays.csv"]
    assert entry["state"] == "rejected" and "latitude" in entry["error"]
    assert t.keys == [] and not res.run_requests
    res = t.tick()
    assert json.loads(res.cursor)["files"]["not_userdays.csv"]["state"] == "rejected"


def test_unparseable_cursor_starts_over(env):
    inbox, cfg, instance = env
    write_csv(inbox / "a.csv", users=10)
    t = Ticker(instance, cfg)
    t.cursor = "not json"
    t.tick()
    t.tick()
    assert len(t.keys) == 1


def _rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
@pytest.mark.slow
def test_large_file_tick_only_seeks(env):
    """A 256 MB input: the registering tick reads a few MB (header, 4 MB sample, boundaries)."""
    inbox, cfg, instance = env
    cfg = cfg.model_copy(update={"batch_users": 10_000})
    n, guid_len = 2_600_000, 32
    line = f"{'0' * guid_len},52.50,13.40,{HLL}\n".encode()
    buf = np.frombuffer(line * n, dtype=np.uint8).reshape(n, len(line)).copy()
    ids = np.arange(n, dtype=np.int64) // 3  # 3 rows per user, sorted
    hexdigits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    for pos in range(12):  # the last 12 hex digits carry the user number
        buf[:, guid_len - 1 - pos] = hexdigits[(ids >> (4 * pos)) & 15]
    path = inbox / "big.csv"
    with open(path, "wb") as fh:
        fh.write(HEADER.encode())
        fh.write(buf.tobytes())
    del buf
    size = path.stat().st_size
    assert size > 250 * 2**20
    set_age(path, 3600)
    t = Ticker(instance, cfg)
    t.tick()
    before = _rchar()
    started = time.perf_counter()
    res = t.tick()
    elapsed = time.perf_counter() - started
    read = _rchar() - before
    users = (n + 2) // 3
    assert abs(len(t.keys) - users / 10_000) <= 2  # batch sizes are estimated from a sample
    assert len(batch_runs(res)) == -(-len(t.keys) // 16)
    assert read < 16 * 2**20, f"tick read {read} bytes of a {size}-byte file"
    print(f"registering tick: {size / 2**20:.0f} MB file, {read / 2**20:.1f} MB read, "
          f"{len(t.keys)} batches, {elapsed:.2f} s")
