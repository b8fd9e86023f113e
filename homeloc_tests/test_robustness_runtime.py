"""Issue 10, runtime: worker errors, exit codes, signals, workers dying with their parent, faults.

``homeloc run`` in a subprocess. A worker's error reaches the user with its
reason (the same with one worker and with two); SIGINT/SIGTERM end the run
with 130/143 and one line saying to run again, and the resumed run equals an
uninterrupted one byte for byte; kill -9 of the parent takes its workers with
it; ``--out`` naming a file is one line and exit 2.
"""

from __future__ import annotations

import itertools
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
    one_error_line,
    replicate,
    run_args,
    write_lines,
)
from homeloc_tests.helpers import batch_stats_mtimes as _stats

BATCH_USERS = "100"

#: long fault-injection runs: `make test-all` (not `make test`)
pytestmark = pytest.mark.heavy


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """2400 users in 24 batches, and the exports of one uninterrupted run."""
    tmp = tmp_path_factory.mktemp("runtime")
    _, lines = base_rows(300, 43, tmp)
    src = write_lines(tmp / "users.csv", replicate(lines, 8))
    ref = tmp / "ref"
    homeloc(*run_args(src, ref, "--batch-users", BATCH_USERS, "--workers", "2"))
    return src, export_files(ref)


@pytest.fixture(scope="module")
def split_user(tmp_path_factory):
    """A file where one user's rows are in two places (found only by the batches)."""
    tmp = tmp_path_factory.mktemp("split")
    _, lines = base_rows(300, 44, tmp)
    groups = [list(g) for _, g in itertools.groupby(lines, key=lambda ln: ln.split(b",")[0])]
    moved = groups[150].pop()  # last row of a user moves behind the next user
    groups[151].append(moved)
    return write_lines(tmp / "split.csv", [ln for g in groups for ln in g])


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_worker_error_gives_its_reason_with_one_or_many_workers(split_user, tmp_path, workers):
    res = homeloc(*run_args(split_user, tmp_path / "out", "--batch-users", BATCH_USERS,
                            "--workers", workers), check=False)
    msg = one_error_line(res)
    assert res.returncode == 2, res.stderr
    assert str(split_user) in msg and "line" in msg, msg
    assert not msg.rstrip().endswith(":"), msg


def _group_pids(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, from /proc."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(d))
    return pids


def _start(src: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*HOMELOC, *run_args(src, out, "--batch-users", BATCH_USERS, "--workers", "2")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env_for(), start_new_session=True)


def _wait_batches(proc: subprocess.Popen, out: Path, n: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while len(_stats(out)) < n:
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.01)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_run_with_its_code_and_the_rerun_resumes(case, tmp_path, sig, code):
    src, ref = case
    out = tmp_path / "out"
    proc = _start(src, out)
    try:
        _wait_batches(proc, out, 2)
        os.kill(proc.pid, sig)  # the parent only, as `kill` or a service manager does
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = err.decode()
    assert proc.returncode == code, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines[-1] == (f"homeloc: interrupted — run the same command again to resume "
                         f"({signal.Signals(sig).name})"), err
    assert "Traceback" not in err and "Dagster" not in err, err
    assert not export_files(out)
    deadline = time.monotonic() + 10  # the workers were stopped with the run
    while _group_pids(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _group_pids(proc.pid)
    before = _stats(out)
    res = homeloc(*run_args(src, out, "--batch-users", BATCH_USERS, "--workers", "2"))
    assert res.returncode == 0
    after = _stats(out)
    assert {k: after[k] for k in before} == before  # finished batches were kept
    assert export_files(out) == ref


def test_workers_die_with_their_parent_on_kill_9(case, tmp_path):
    src, _ = case
    out = tmp_path / "out"
    proc = _start(src, out)
    try:
        _wait_batches(proc, out, 1)
        assert len(_group_pids(proc.pid)) >= 3  # parent and two workers at least
        os.kill(proc.pid, signal.SIGKILL)  # the parent alone
        proc.communicate(timeout=60)
        deadline = time.monotonic() + 10
        while _group_pids(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = _group_pids(proc.pid)
    finally:
        for pid in _group_pids(proc.pid):  # whatever is left of this test's run
            os.kill(pid, signal.SIGKILL)
    assert not left


def test_out_naming_a_file_is_one_line_and_exit_2(case, tmp_path):
    src, _ = case
    out = tmp_path / "exports.csv"
    out.write_text("precious\n")
    res = homeloc(*run_args(src, out), check=False)
    msg = one_error_line(res)
    assert res.returncode == 2 and str(out) in msg and "not a folder" in msg, res.stderr
    assert out.read_text() == "precious\n"


@pytest.fixture()
def tmpfs(tmp_path):
    """A 64 MB tmpfs (root only; skips where it cannot be mounted), unmounted afterwards."""
    d = tmp_path / "mnt"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(d)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("two")
    a = write_lines(tmp / "a.csv", base_rows(120, 71, tmp)[1])
    b = write_lines(tmp / "b.csv", base_rows(150, 72, tmp)[1])
    return a, b


def _fill(folder: Path) -> None:
    """Write zeros until the file system is full, to the last page."""
    with open(folder / "filler", "wb", buffering=0) as fh:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError:
                pass


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_full_disk_is_one_line_exit_1_and_the_previous_exports_stay(two_inputs, tmpfs, workers):
    a, b = two_inputs
    out = tmpfs / "out"
    homeloc(*run_args(a, out, "--batch-users", "50", "--workers", workers))
    before = export_files(out)
    _fill(tmpfs)
    res = homeloc(*run_args(b, out, "--batch-users", "50", "--workers", workers), check=False)
    msg = one_error_line(res)
    assert res.returncode == 1 and "No space left on device" in msg, res.stderr
    assert export_files(out) == before


def test_a_read_only_out_is_one_line_exit_1_and_the_previous_exports_stay(two_inputs, tmpfs):
    a, b = two_inputs
    out = tmpfs / "out"
    homeloc(*run_args(a, out))
    before = export_files(out)
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    res = homeloc(*run_args(b, out), check=False)
    msg = one_error_line(res)
    assert res.returncode == 1 and "Read-only file system" in msg and str(out) in msg, res.stderr
    assert export_files(out) == before
