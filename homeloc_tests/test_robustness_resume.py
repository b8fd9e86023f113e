"""Issue 5, robustness: kill -9 and resume; two runs of the same batches at once.

``homeloc run`` is killed (SIGKILL to its whole process group, workers
included) early, in the middle of the batches and while the exports are being
written, each time resumed by the same command. Finished batches are kept (the
rerun says so and their stats files keep their mtime), the final exports equal
an uninterrupted run byte for byte and no partial or temporary file is left in
``--out``. Two runs on the same input and ``--out`` at once end with the same
exports too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from homeloc_tests.helpers import (
    HOMELOC,
    base_rows,
    env_for,
    export_files,
    homeloc,
    replicate,
    run_args,
    stray_files,
    write_lines,
)
from homeloc_tests.helpers import (
    batch_stats_mtimes as _stats,
)

BATCH_USERS = "100"


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """2400 users in 24 batches, and the exports of one uninterrupted run."""
    tmp = tmp_path_factory.mktemp("resume")
    _, lines = base_rows(300, 41, tmp)
    src = write_lines(tmp / "users.csv", replicate(lines, 8))
    ref = tmp / "ref"
    homeloc(*run_args(src, ref, "--batch-users", BATCH_USERS, "--workers", "2"))
    return src, export_files(ref)


def _loud(src: Path, out: Path, workers: str) -> list[str]:
    """The run command without --quiet (the resume message is progress output)."""
    return ["run", "--input", str(src), "--out", str(out), "--batch-users", BATCH_USERS,
            "--workers", workers]


def _start(src: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*HOMELOC, *run_args(src, out, "--batch-users", BATCH_USERS, "--workers", "2")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env_for(), start_new_session=True,
    )


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> tuple[bool, str]:
    """SIGKILL the whole process group as soon as ``ready()``; (killed, stderr)."""
    deadline = time.monotonic() + timeout
    killed = False
    try:
        while time.monotonic() < deadline:
            if ready():
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                break
            if proc.poll() is not None:
                break
            time.sleep(0.005)
        else:
            raise AssertionError("condition not reached in time")
    finally:
        if proc.poll() is None and not killed:
            os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        for _ in range(200):  # the workers die with the group; wait until they are gone
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
    return killed, err.decode()


def _check_not_redone(before: dict[str, int], out: Path) -> None:
    """The batches finished ``before`` were not redone: their stats files keep their mtime."""
    after = _stats(out)
    assert {k: after.get(k) for k in before} == before


def _check_kept(before: dict[str, int], out: Path, stderr: str) -> None:
    """A resumed (not --quiet) run kept the finished batches and said so."""
    assert before, "no batch was finished before this run: nothing to keep"
    _check_not_redone(before, out)
    assert f"resuming: {len(before)} finished batch(es) kept" in stderr, stderr


@pytest.mark.heavy
def test_kill_9_at_several_moments_then_resume(case, tmp_path):
    src, ref = case
    out = tmp_path / "out"
    n_batches = 24
    moments = [
        ("early", lambda: len(_stats(out)) >= 1),
        ("mid-batches", lambda: len(_stats(out)) >= n_batches // 2),
        ("exports", lambda: any(p.name.endswith(".tmp") for p in out.glob(".*"))
         or (out / "user_home_locations.csv").exists()),
    ]
    killed = []
    for name, ready in moments:
        before = _stats(out)
        ok, err = _kill_when(_start(src, out), ready)
        if ok:
            killed.append(name)
        _check_not_redone(before, out)  # --quiet: no resume message to look for
    assert "mid-batches" in killed, killed
    before = _stats(out)
    res = homeloc(*_loud(src, out, "2"))
    _check_kept(before, out, res.stderr)
    assert len(_stats(out)) == n_batches
    got = export_files(out)
    assert sorted(got) == sorted(ref)
    for name in ref:
        assert got[name] == ref[name], name
    assert not stray_files(out), stray_files(out)


@pytest.mark.heavy
def test_kill_9_right_after_the_first_batches(case, tmp_path):
    """Killed while workers are writing: the next command keeps what finished, redoes the rest."""
    src, ref = case
    out = tmp_path / "out"
    ok, _ = _kill_when(_start(src, out), lambda: len(_stats(out)) >= 3)
    assert ok
    before = _stats(out)
    res = homeloc(*_loud(src, out, "1"))
    _check_kept(before, out, res.stderr)
    assert export_files(out) == ref
    assert not stray_files(out), stray_files(out)


@pytest.mark.heavy
def test_two_runs_at_once_on_the_same_batches(case, tmp_path):
    src, ref = case
    out = tmp_path / "out"
    procs = [_start(src, out) for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    codes = [p.returncode for p in procs]
    errs = [e.decode() for _, e in results]
    assert codes == [0, 0], errs
    assert export_files(out) == ref
    assert not stray_files(out), stray_files(out)
    # and a third run afterwards only keeps what is there: all 24 batches, none redone
    before = _stats(out)
    assert len(before) == 24
    res = homeloc(*_loud(src, out, "1"))
    _check_kept(before, out, res.stderr)
    assert export_files(out) == ref


def _holder(storage: Path, key: str, seconds: float) -> subprocess.Popen:
    code = ("import sys, time\n"
            "from homeloc_assets.batch_runner import batch_lock\n"
            "from homeloc_assets.layout import Layout\n"
            f"with batch_lock(Layout({str(storage)!r}), {key!r}):\n"
            "    print('held', flush=True)\n"
            f"    time.sleep({seconds})\n")
    p = subprocess.Popen([HOMELOC[0], "-c", code], stdout=subprocess.PIPE, env=env_for())
    assert p.stdout.readline().strip() == b"held"
    return p


@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_batch_lock_is_taken_in_turn_and_freed_by_kill_9(tmp_path):
    from homeloc_assets.batch_runner import batch_lock
    from homeloc_assets.layout import Layout

    layout, stats = Layout(tmp_path), tmp_path / "batch_stats"
    p = _holder(tmp_path, "k-00001", 1.0)
    with batch_lock(layout, "k-00001") as waited:
        assert waited  # the other process had it: we waited for our turn
    p.wait(timeout=60)
    with batch_lock(layout, "k-00002") as waited:
        assert not waited  # other keys are independent
    p = _holder(tmp_path, "k-00001", 600)
    p.kill()  # SIGKILL while holding it
    p.wait(timeout=60)
    with batch_lock(layout, "k-00001") as waited:
        assert waited  # its lease was taken over: it may have finished the batch first
    assert not list((stats / ".locks").iterdir())  # released leases leave no file


def test_stale_temporaries_of_killed_writers_are_removed(tmp_path):
    from homeloc_assets.batch_runner import BATCH_TABLES
    from homeloc_assets.batch_runner import remove_stale_temporaries as batch_clean
    from homeloc_assets.exports import EXPORT_FILES
    from homeloc_assets.exports import remove_stale_temporaries as export_clean
    from homeloc_assets.layout import Layout

    tables, stats = tmp_path / "assets", tmp_path / "batch_stats"
    stale, kept = [], []
    for a in BATCH_TABLES:
        stale.append(tables / a / ".k-00001.parquet.ab12cd.tmp")
        kept.append(tables / a / ".k-00002.parquet.ab12cd.tmp")  # another batch's
        kept.append(tables / a / "k-00001.parquet")
    stale.append(stats / ".k-00001.json.xyz.tmp")
    kept.append(stats / "k-00001.json")
    # the landscape tables the batch worker writes (cells and per layer)
    stale.append(stats / "landscape" / ".k-00001.cells.0123456789abcdef.parquet.xyz.tmp")
    stale.append(stats / "landscape" / ".k-00001.states.0123456789abcdef.parquet.xyz.tmp")
    kept.append(stats / "landscape" / "k-00001.cells.0123456789abcdef.parquet")
    kept.append(stats / "landscape" / ".k-00002.cells.0123456789abcdef.parquet.xyz.tmp")
    out = tmp_path / "out"
    stale += [out / f".{n}.q1w2e3.tmp" for n in EXPORT_FILES]
    kept += [out / n for n in EXPORT_FILES] + [out / ".other.tmp", out / "notes.txt"]
    for p in stale + kept:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    assert sorted(batch_clean(Layout(tmp_path), "k-00001") + export_clean(out)) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)
