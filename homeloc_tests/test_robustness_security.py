"""Issue 5, security: the PostgreSQL password never shows; no SQL is built from data.

A scratch role ``homeloc_t`` gets the password ``S3cr3t-xyz``. The server
trusts every local connection, so the password is not checked; wrong hosts and
ports produce the errors. After each run the secret must be in none of:
stdout, stderr, the exception messages, the files in ``--out`` (exports,
partition files) and the Dagster instance (event logs, run records and
snapshots in ``DAGSTER_HOME``), nor in the ``HllBackendResource`` config that
the UI shows.
"""

from __future__ import annotations

import ast
import traceback
from pathlib import Path

import pytest

from homeloc_tests.helpers import base_rows, export_files, homeloc, write_lines

pytestmark = [pytest.mark.heavy, pytest.mark.postgres]

SECRET = "S3cr3t-xyz"
ROLE = "homeloc_t"
POSTGRES_PY = Path(__file__).resolve().parent.parent / "homeloc_assets" / "backends" / "postgres.py"


@pytest.fixture(scope="module")
def role(pg_dsn):
    import psycopg2

    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,))
        if cur.fetchone() is None:
            cur.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD %s", (SECRET,))
        else:
            cur.execute(f"ALTER ROLE {ROLE} LOGIN PASSWORD %s", (SECRET,))
    conn.close()
    return ROLE


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("security")
    _, lines = base_rows(120, 61, tmp)
    return write_lines(tmp / "users.csv", lines)


def assert_no_secret(*texts: str, folder: Path | None = None) -> None:
    for t in texts:
        assert SECRET not in t, t
    if folder is not None and folder.exists():
        hits = [str(p) for p in folder.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
        assert not hits, hits


def _run(src, out, env, check):
    return homeloc("run", "--input", str(src), "--out", str(out), "--backend", "postgres",
                   "--batch-users", "60", "--workers", "1", env=env, check=check)


@pytest.mark.parametrize(
    "how",
    ["password-env", "password-in-dsn", "password-in-url"],
)
def test_a_working_run_keeps_the_password_out_of_everything(role, src, tmp_path, how):
    out = tmp_path / "out"
    env = {"HOMELOC_PG_PASSWORD": "", "HOMELOC_PG_DSN": ""}
    if how == "password-env":
        env.update(HOMELOC_PG_PASSWORD=SECRET, HOMELOC_PG_HOST="127.0.0.1", HOMELOC_PG_PORT="5432",
                   HOMELOC_PG_DB="test", HOMELOC_PG_USER=role)
    elif how == "password-in-dsn":
        env["HOMELOC_PG_DSN"] = f"host=127.0.0.1 port=5432 dbname=test user={role} password={SECRET}"
    else:
        env["HOMELOC_PG_DSN"] = f"postgresql://{role}:{SECRET}@127.0.0.1:5432/test"
    res = _run(src, out, env, check=True)
    assert export_files(out)
    assert_no_secret(res.stdout, res.stderr, folder=out)


@pytest.mark.parametrize(
    "env",
    [
        {"HOMELOC_PG_PASSWORD": SECRET, "HOMELOC_PG_PORT": "1", "HOMELOC_PG_USER": ROLE},
        {"HOMELOC_PG_PASSWORD": SECRET, "HOMELOC_PG_HOST": "no-such-host.invalid"},
        {"HOMELOC_PG_DSN": f"host=127.0.0.1 port=1 dbname=test user={ROLE} password={SECRET}"},
        {"HOMELOC_PG_DSN": f"postgresql://{ROLE}:{SECRET}@127.0.0.1:1/test"},
        {"HOMELOC_PG_DSN": f"host=127.0.0.1 port=1 password='{SECRET} x' user={ROLE}"},
    ],
    ids=["port", "host", "dsn-port", "url-port", "dsn-quoted"],
)
def test_connection_errors_do_not_show_the_password(role, src, tmp_path, env):
    out = tmp_path / "out"
    env = {"HOMELOC_PG_RETRIES": "1", "HOMELOC_PG_DSN": "", **env}
    res = _run(src, out, env, check=False)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("homeloc: error:") and "PostgreSQL" in last, res.stderr
    assert_no_secret(res.stdout, res.stderr, folder=out)
    assert not export_files(out)


def test_exceptions_and_logs_of_the_backend(monkeypatch, caplog):
    from homeloc_assets.backends import BackendError, PostgresBackend, PostgresSettings

    monkeypatch.setenv("HOMELOC_PG_PASSWORD", SECRET)
    for s in [
        PostgresSettings(port=1, retries=1, backoff_seconds=0.01, user=ROLE),
        PostgresSettings(dsn=f"host=127.0.0.1 port=1 user={ROLE} password={SECRET}", retries=1,
                         backoff_seconds=0.01),
    ]:
        b = PostgresBackend(s)
        with pytest.raises(BackendError) as ei:
            b.check()
        text = "".join(traceback.format_exception(ei.value))
        assert_no_secret(str(ei.value), repr(ei.value), text, s.describe(), repr(b.__getstate__()))
    assert_no_secret(caplog.text)


def test_resource_config_has_no_password(monkeypatch):
    from homeloc_assets.defs.resources import HllBackendResource

    fields = set(HllBackendResource.model_fields)
    assert not {f for f in fields if "password" in f} - {"pg_password_env"}, fields
    monkeypatch.setenv("HOMELOC_PG_PASSWORD", SECRET)
    for dsn in [f"host=127.0.0.1 port=5432 user={ROLE} password={SECRET} dbname=test",
                f"postgresql://{ROLE}:{SECRET}@127.0.0.1:5432/test"]:
        monkeypatch.setenv("HOMELOC_PG_DSN", dsn)
        r = HllBackendResource.from_env("postgres")
        assert_no_secret(repr(r), str(r.model_dump()), repr(r.pg_settings))
        # and the connection still gets the password (from the environment, at connect time)
        assert r.pg_settings.connect_kwargs().get("password") == SECRET or \
            SECRET in str(r.pg_settings.connect_kwargs().get("dsn", ""))


def test_no_sql_is_built_by_formatting():
    """Every execute/copy_expert in the PostgreSQL backend gets a constant SQL string."""
    tree = ast.parse(POSTGRES_PY.read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Attribute)
             and n.func.attr in ("execute", "executemany", "copy_expert", "mogrify")]
    assert calls
    for c in calls:
        sql = c.args[0]
        assert isinstance(sql, ast.Constant) and isinstance(sql.value, str), ast.unparse(c)
