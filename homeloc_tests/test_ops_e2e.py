"""End to end under the real daemon: drop a file, get correct exports, no clicks.

``dagster-daemon run`` on a temporary DAGSTER_HOME with the project's
dagster.yaml: the input sensor registers the file and requests batch runs,
the queued run coordinator launches them, the automation sensor materialises
user_classification and homeloc_exports. The exported homes must equal the
synthetic truth exactly.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEADLINE_SECONDS = 240


def _rows(path: Path, key: str, value: str) -> dict[str, str]:
    with open(path, newline="") as fh:
        return {r[key]: r[value] for r in csv.DictReader(fh)}


@pytest.mark.slow
@pytest.mark.heavy
def test_daemon_turns_a_dropped_file_into_exports(tmp_path):
    from homeloc_assets.synth import generate

    home, inbox, out, stage = (tmp_path / d for d in ("home", "in", "out", "stage"))
    for d in (home, inbox, out, stage):
        d.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    synth = generate(6000, stage / "users.csv", seed=11)

    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "HOMELOC_INPUT_DIR": str(inbox),
        "HOMELOC_OUTPUT_DIR": str(out),
        "HOMELOC_BATCH_USERS": "1000",
        "HOMELOC_SENSOR_INTERVAL_SECONDS": "5",
        "HOMELOC_SENSOR_SETTLE_SECONDS": "2",
        "HOMELOC_AUTOMATION_INTERVAL_SECONDS": "5",
    }
    log_path = tmp_path / "daemon.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed in finally
    daemon = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run",
         "-m", "homeloc_assets.definitions"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        # appears atomically under its final name, as a careful uploader does
        shutil.copy(synth.out_path, inbox / ".users.csv.part")
        os.replace(inbox / ".users.csv.part", inbox / "users.csv")
        summary = out / "summary.json"
        started = time.monotonic()
        while time.monotonic() - started < DEADLINE_SECONDS:
            assert daemon.poll() is None, f"daemon exited:\n{log_path.read_text()[-3000:]}"
            if summary.exists() and (out / "user_home_locations.csv").exists():
                break
            time.sleep(2)
        else:
            pytest.fail(f"no exports after {DEADLINE_SECONDS}s:\n{log_path.read_text()[-4000:]}")

        s = json.loads(summary.read_text())
        assert s["users"] == 6000 and s["batches"] >= 2
        truth = _rows(synth.truth_path, "user_guid", "home_country")
        homes = _rows(out / "user_home_locations.csv", "user_guid", "country")
        assert homes == truth
        classes = _rows(out / "user_classification.csv", "user_guid", "classification")
        assert classes == _rows(synth.truth_path, "user_guid", "classification")

        import dagster as dg

        with dg.DagsterInstance.from_config(str(home)) as instance:
            runs = [r.dagster_run for r in instance.get_run_records()]
        by_job = {}
        for r in runs:
            by_job.setdefault(r.job_name, []).append(r)
        assert len(by_job["homeloc_batches_job"]) == 1  # <= 16 batches: one range run
        run = by_job["homeloc_batches_job"][0]
        assert run.tags["dagster/sensor_name"] == "homeloc_input_sensor"
        assert run.tags["dagster/asset_partition_range_start"].endswith("-00000")
        auto = [r for r in runs if r.tags.get("dagster/sensor_name") == "homeloc_automation"]
        assert auto, "exports were not written by the automation sensor"
    finally:
        try:
            os.killpg(daemon.pid, signal.SIGTERM)
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
        except ProcessLookupError:
            pass
        log.close()
