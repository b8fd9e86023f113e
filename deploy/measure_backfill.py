"""Measure a UI-style asset backfill of every batch of one file through the Dagster daemon.

    .venv/bin/python deploy/measure_backfill.py --input big.csv --batch-users 10000 --work /tmp/bf

What it does, in a fresh DAGSTER_HOME under ``--work`` with the project's
``dagster.yaml``: registers the file's batches as ``user_batches`` partitions
(seek-only planning, as the input sensor does), materialises the countries
in-process, starts ``dagster-daemon run``, submits the same asset backfill the
UI's "Materialize all → backfill" submits (the four batch assets, every
partition; ``BackfillPolicy.multi_run(16)`` cuts it into runs) and times it:
until the backfill has finished, and until the eager automation has written
the exports. The input folder given to the daemon is empty, so the input
sensor requests nothing and the backfill does all the work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, type=Path)
    p.add_argument("--batch-users", type=int, default=10_000)
    p.add_argument("--work", type=Path, default=Path("/tmp/homeloc-backfill"))
    p.add_argument("--timeout", type=float, default=3600)
    args = p.parse_args(argv)

    work = args.work
    if work.exists():
        shutil.rmtree(work)
    home, inbox, out = work / "dagster_home", work / "in", work / "out"
    for d in (home, inbox, out):
        d.mkdir(parents=True)
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "HOMELOC_INPUT_DIR": str(inbox),
        "HOMELOC_OUTPUT_DIR": str(out),
        "HOMELOC_BATCH_USERS": str(args.batch_users),
        "HOMELOC_AUTOMATION_INTERVAL_SECONDS": "10",
    }
    os.environ.update(env)

    import dagster as dg
    from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
    from dagster._core.utils import make_new_backfill_id

    from homeloc_assets.catalog import Catalog
    from homeloc_assets.definitions import build_definitions
    from homeloc_assets.names import BATCH_ASSETS
    from homeloc_assets.settings import Settings

    settings = Settings.from_env()
    defs = build_definitions(settings)
    instance = dg.DagsterInstance.get()
    t = time.monotonic()
    plan_id, keys = Catalog(settings.storage_path).register(args.input, settings.batch_users)
    plan_s = time.monotonic() - t
    instance.add_dynamic_partitions("user_batches", keys)
    res = dg.materialize(defs.assets, selection=["world_countries", "countries"],
                         instance=instance, resources=defs.resources)
    assert res.success
    print(f"planned {len(keys)} batches of {args.input} in {plan_s:.2f} s", flush=True)

    log = open(work / "daemon.log", "w")  # noqa: SIM115 - closed in finally
    daemon = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(ROOT / "workspace.yaml")],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        asset_graph = defs.get_repository_def().asset_graph
        backfill = PartitionBackfill.from_asset_partitions(
            backfill_id=make_new_backfill_id(),
            asset_graph=asset_graph,
            partition_names=keys,
            asset_selection=[dg.AssetKey(a) for a in BATCH_ASSETS],
            backfill_timestamp=time.time(),
            tags={},
            dynamic_partitions_store=instance,
            all_partitions=False,
            title="measure_backfill",
            description=None,
            run_config=None,
        )
        t0 = time.monotonic()
        instance.add_backfill(backfill)
        done_at = exports_at = None
        while time.monotonic() - t0 < args.timeout:
            time.sleep(2)
            bf = instance.get_backfill(backfill.backfill_id)
            if done_at is None and bf.status not in (BulkActionStatus.REQUESTED,):
                done_at = time.monotonic() - t0
                print(f"backfill {bf.status.value} after {done_at:.0f} s", flush=True)
                if bf.status != BulkActionStatus.COMPLETED_SUCCESS:
                    break
            summary = out / "summary.json"
            if done_at is not None and summary.exists():
                s = json.loads(summary.read_text())
                if s.get("batches") == len(keys):
                    exports_at = time.monotonic() - t0
                    break
        runs = [r for r in instance.get_run_records(dg.RunsFilter(
            tags={"dagster/backfill": backfill.backfill_id}))]
        spans = [(r.start_time, r.end_time) for r in runs if r.start_time and r.end_time]
        result = {
            "input": str(args.input),
            "batches": len(keys),
            "batch_users": args.batch_users,
            "backfill_runs": len(runs),
            "backfill_seconds": round(done_at, 1) if done_at else None,
            "first_run_start_to_last_run_end_seconds": (
                round(max(e for _, e in spans) - min(s for s, _ in spans), 1) if spans else None),
            "until_exports_seconds": round(exports_at, 1) if exports_at else None,
            "cpus": len(os.sched_getaffinity(0)),
        }
        print(json.dumps(result, indent=1))
        (work / "result.json").write_text(json.dumps(result, indent=1))
        return 0 if exports_at else 1
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
        log.close()


if __name__ == "__main__":
    sys.exit(main())
