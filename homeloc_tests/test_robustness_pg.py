"""Issue 5, robustness: PostgreSQL faults under ``homeloc run --backend postgres``.

* the server restarts in the middle of the batches: the lost connection is
  retried with back-off and the exports equal the embedded run's;
* the server stops for good (short retries): one clear failure line; once it is
  back, the same command resumes (finished batches kept) to the same exports;
* the hll extension is missing and cannot be created: the message says how to
  install it.

The server is shared with other tests: every stop/restart is undone in a
``finally`` and followed by waiting for ``pg_isready``; outages last seconds.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from homeloc_tests.helpers import (
    HOMELOC,
    base_rows,
    export_files,
    homeloc,
    one_error_line,
    replicate,
    run_args,
    write_lines,
)
from homeloc_tests.helpers import batch_stats_mtimes as _stats

pytestmark = [pytest.mark.postgres, pytest.mark.heavy]  # CI time (about 50 s here)

BATCH_USERS = "60"
PG_ENV = {"HOMELOC_PG_HOST": "127.0.0.1", "HOMELOC_PG_PORT": "5432", "HOMELOC_PG_DB": "test",
          "HOMELOC_PG_USER": "postgres"}


def pg_ctl(action: str) -> None:
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", "15", "main", action],
                   check=False, capture_output=True, timeout=120)


def wait_ready(timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", "5432"], capture_output=True)
        if r.returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError("PostgreSQL did not come back")


def ensure_up() -> None:
    r = subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", "5432"], capture_output=True)
    if r.returncode != 0:
        pg_ctl("start")
    wait_ready()


@pytest.fixture(scope="module")
def case(tmp_path_factory, pg_dsn):
    """900 users in 15 batches and the exports of the embedded backend."""
    tmp = tmp_path_factory.mktemp("pgfaults")
    _, lines = base_rows(150, 51, tmp)
    src = write_lines(tmp / "users.csv", replicate(lines, 6))
    ref = tmp / "ref"
    homeloc(*run_args(src, ref, "--batch-users", BATCH_USERS))
    return src, export_files(ref)


def _pg_cmd(src, out, *extra) -> list[str]:
    return ["run", "--input", str(src), "--out", str(out), "--backend", "postgres",
            "--batch-users", BATCH_USERS, "--workers", "1", *extra]


def _popen(src, out, env) -> subprocess.Popen:
    import os

    from homeloc_tests.helpers import env_for

    e = env_for(env)
    return subprocess.Popen([*HOMELOC, *_pg_cmd(src, out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e,
                            start_new_session=True, cwd=os.getcwd())


def _wait_stats(proc, out, n: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while len(_stats(out)) < n:
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.01)


@pytest.mark.heavy
def test_restart_mid_run_is_retried(case, tmp_path):
    src, ref = case
    out = tmp_path / "out"
    proc = _popen(src, out, PG_ENV)
    try:
        _wait_stats(proc, out, 3)
        pg_ctl("restart")
    finally:
        ensure_up()
    _, err = proc.communicate(timeout=600)
    err = err.decode()
    assert proc.returncode == 0, err
    assert "retry 1/5" in err, err  # the lost connection was retried, not fatal
    assert len(_stats(out)) == 15
    assert export_files(out) == ref


@pytest.mark.heavy
def test_server_gone_for_good_fails_clearly_then_resumes(case, tmp_path):
    src, ref = case
    out = tmp_path / "out"
    env = dict(PG_ENV, HOMELOC_PG_RETRIES="2")
    proc = _popen(src, out, env)
    try:
        _wait_stats(proc, out, 3)
        pg_ctl("stop")
        _, err = proc.communicate(timeout=300)
    finally:
        ensure_up()
    err = err.decode()
    assert proc.returncode != 0
    msg = one_error_line(type("R", (), {"stderr": err})())
    assert "PostgreSQL" in msg and "unreachable after 3 attempts" in msg, msg
    assert not export_files(out)
    before = _stats(out)
    assert 3 <= len(before) < 15
    res = homeloc(*_pg_cmd(src, out), env=env)
    assert f"resuming: {len(before)} finished batch(es) kept" in res.stderr, res.stderr
    after = _stats(out)
    assert {k: after[k] for k in before} == before
    assert export_files(out) == ref


@pytest.fixture()
def no_extension_db(pg_conn):
    """A scratch database without hll and a role that may not create it."""
    with pg_conn.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS homeloc_noext")
        cur.execute("CREATE DATABASE homeloc_noext")
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = 'homeloc_noext_user'")
        if cur.fetchone() is None:
            cur.execute("CREATE ROLE homeloc_noext_user LOGIN NOSUPERUSER NOCREATEDB")
    yield "host=127.0.0.1 port=5432 dbname=homeloc_noext user=homeloc_noext_user"
    with pg_conn.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS homeloc_noext WITH (FORCE)")


@pytest.mark.slow
def test_missing_extension_says_how_to_install_it(case, tmp_path, no_extension_db):
    src, _ = case
    out = tmp_path / "out"
    res = homeloc(*_pg_cmd(src, out), env={"HOMELOC_PG_DSN": no_extension_db}, check=False)
    assert res.returncode != 0
    msg = one_error_line(res)
    assert res.returncode == 1, res.stderr
    assert "hll extension is not available in database 'homeloc_noext'" in msg, msg
    # the server has the package here: the command to run, and no silent creation
    assert "CREATE EXTENSION hll;" in msg and "never creates extensions" in msg, msg
    assert not export_files(out)
