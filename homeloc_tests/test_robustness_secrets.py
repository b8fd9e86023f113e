"""Issue 10, secrets: against a server that asks for the password.

A role ``homeloc_pw`` must authenticate with ``scram-sha-256`` from
127.0.0.1 (a ``host`` line for this role only, put at the top of pg_hba.conf
by the session fixture, idempotently; trust for ``postgres`` is untouched).
Its password has every character that breaks a hand-written DSN: ``@``,
``/``, ``:`` and a space. Whatever the DSN's form, well-formed or not, no
piece of the password is in stdout, stderr, ``--out`` or the Dagster
instance's files; a wrong password fails at once on one line (no retries);
the hll extension is never created silently, even by a superuser.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

import pytest

from homeloc_tests.helpers import (
    base_rows,
    export_files,
    homeloc,
    one_error_line,
    write_lines,
)

pytestmark = [pytest.mark.heavy, pytest.mark.postgres]

ROLE = "homeloc_pw"
SECRET = "Hq7ZwK@Wk3Rtp/Pz8Xvq:Jm2Qcd Lb9Tyu"
PIECES = re.split(r"[@/: ]", SECRET)  # six characters each: no chance hits in binary files
HBA_LINE = f"host all {ROLE} 127.0.0.1/32 scram-sha-256"


@pytest.fixture(scope="module")
def pw_role(pg_dsn):
    """The role, and pg_hba.conf asking it for its password (skips where that cannot be set)."""
    import psycopg2

    pg_conn = psycopg2.connect(pg_dsn)
    pg_conn.autocommit = True
    with pg_conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,))
        verb = "ALTER" if cur.fetchone() else "CREATE"
        cur.execute("SET password_encryption = 'scram-sha-256'")
        cur.execute(f"{verb} ROLE {ROLE} LOGIN NOSUPERUSER PASSWORD %s", (SECRET,))
        cur.execute("SHOW hba_file")
        hba = Path(cur.fetchone()[0])
        try:
            text = hba.read_text()
            if HBA_LINE not in text.splitlines():
                hba.write_text(f"# homeloc tests: this role must give its password\n{HBA_LINE}\n{text}")
        except OSError as exc:
            pytest.skip(f"cannot make {ROLE} need a password ({hba}: {exc})")
        cur.execute("SELECT pg_reload_conf()")
    pg_conn.close()

    try:  # the server must really ask now
        psycopg2.connect(host="127.0.0.1", dbname="test", user=ROLE, connect_timeout=5).close()
        pytest.skip("the server does not ask for the password")
    except psycopg2.OperationalError:
        pass
    return ROLE


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("secrets")
    _, lines = base_rows(120, 62, tmp)
    return write_lines(tmp / "users.csv", lines)


def assert_no_secret(*texts: str, folders: tuple[Path, ...] = ()) -> None:
    for t in texts:
        for piece in [SECRET, quote(SECRET, safe=""), *PIECES]:
            assert piece not in t, (piece, t)
    for folder in folders:
        for p in folder.rglob("*"):
            if p.is_file():
                data = p.read_bytes()
                for piece in [SECRET, quote(SECRET, safe=""), *PIECES]:
                    assert piece.encode() not in data, (piece, p)


def _run(src, out, home, env, workers="1"):
    return homeloc("run", "--input", str(src), "--out", str(out), "--backend", "postgres",
                   "--batch-users", "60", "--workers", workers, "--quiet", "--no-figures",
                   "--dagster-home", str(home),
                   env={"HOMELOC_PG_PASSWORD": "", "HOMELOC_PG_DSN": "", "HOMELOC_PG_RETRIES": "2",
                        **env}, check=False)


GOOD = {
    "password-env": {"HOMELOC_PG_PASSWORD": SECRET,
                     "HOMELOC_PG_DSN": f"host=127.0.0.1 port=5432 dbname=test user={ROLE}"},
    "url-raw": {"HOMELOC_PG_DSN": f"postgresql://{ROLE}:{SECRET}@127.0.0.1:5432/test"},
    "kv-unquoted": {"HOMELOC_PG_DSN": f"host=127.0.0.1 password={SECRET} port=5432 dbname=test user={ROLE}"},
}


@pytest.mark.parametrize("how", list(GOOD))
def test_every_form_of_dsn_connects_and_keeps_the_password_out(pw_role, src, tmp_path, how):
    out, home = tmp_path / "out", tmp_path / "dagster_home"
    res = _run(src, out, home, GOOD[how], workers="2")
    assert res.returncode == 0, res.stderr
    assert export_files(out)
    assert_no_secret(res.stdout, res.stderr, folders=(out, home))
    assert any(home.rglob("*.db")), "the Dagster instance stored nothing to check"


def test_a_wrong_password_fails_at_once_on_one_line(pw_role, src, tmp_path):
    out, home = tmp_path / "out", tmp_path / "dagster_home"
    wrong = SECRET[::-1]
    res = _run(src, out, home, {"HOMELOC_PG_DSN": f"postgresql://{ROLE}:{wrong}@127.0.0.1:5432/test",
                                "HOMELOC_PG_RETRIES": "5"})
    msg = one_error_line(res)
    assert res.returncode == 1, res.stderr
    assert "password authentication failed" in msg and "unreachable" not in msg, msg
    assert "retry" not in res.stderr, res.stderr
    assert wrong not in res.stderr and SECRET not in res.stderr
    assert not export_files(out)


@pytest.mark.parametrize("dsn", [
    f"host=127.0.0.1 port=5432 dbname=test user={ROLE} password='{SECRET}",  # unterminated quote
    f"postgresql://{ROLE}:{SECRET}@127.0.0.1:notaport/test",
], ids=["unterminated-quote", "bad-port"])
def test_a_malformed_dsn_is_one_line_without_the_password(pw_role, src, tmp_path, dsn):
    out, home = tmp_path / "out", tmp_path / "dagster_home"
    res = _run(src, out, home, {"HOMELOC_PG_DSN": dsn})
    if res.returncode != 0:  # cut defensively, some malformed DSNs still connect
        msg = one_error_line(res)
        assert res.returncode in (1, 2), res.stderr
        assert "PostgreSQL" in msg or "HOMELOC_PG_DSN" in msg, msg
    assert_no_secret(res.stdout, res.stderr, folders=(out, home))


def test_a_superuser_does_not_create_the_extension(pg_conn, src, tmp_path):
    with pg_conn.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS homeloc_noext_su")
        cur.execute("CREATE DATABASE homeloc_noext_su")
    try:
        res = homeloc("run", "--input", str(src), "--out", str(tmp_path / "out"), "--backend",
                      "postgres", "--workers", "1", "--quiet",
                      env={"HOMELOC_PG_DSN": "host=127.0.0.1 port=5432 dbname=homeloc_noext_su user=postgres"},
                      check=False)
        msg = one_error_line(res)
        assert res.returncode == 1 and "CREATE EXTENSION hll;" in msg, res.stderr
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", dbname="homeloc_noext_su", user="postgres")
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_extension WHERE extname = 'hll'")
            assert cur.fetchone()[0] == 0
        conn.close()
    finally:
        with pg_conn.cursor() as cur:
            cur.execute("DROP DATABASE IF EXISTS homeloc_noext_su WITH (FORCE)")
