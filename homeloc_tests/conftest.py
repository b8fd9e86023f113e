"""Shared fixtures: a live PostgreSQL with the hll extension, and small data sets."""

from __future__ import annotations

import os
import sys

import pytest

PG_DSN = os.environ.get("HOMELOC_TEST_PG_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres")


def _require_pg() -> bool:
    return os.environ.get("HOMELOC_REQUIRE_PG", "") not in ("", "0")


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """DSN of a PostgreSQL with the hll extension created.

    Skips when no server or no extension is there, unless HOMELOC_REQUIRE_PG=1
    (set by CI), where it fails instead.
    """
    try:
        import psycopg2

        conn = psycopg2.connect(PG_DSN, connect_timeout=5)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE EXTENSION IF NOT EXISTS hll")
        conn.close()
    except Exception as exc:  # noqa: BLE001 - any failure means "no usable server"
        reason = f"PostgreSQL with the hll extension not available at {PG_DSN!r}: {exc}"
        if _require_pg():
            pytest.fail(reason)
        pytest.skip(reason)
    return PG_DSN


@pytest.fixture()
def pg_conn(pg_dsn):
    """A psycopg2 connection (autocommit) to the test database."""
    import psycopg2

    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def small_input(tmp_path_factory):
    """A synthetic userdays CSV of 3000 users with its truth file (built once per session)."""
    from homeloc_assets.synth import generate

    d = tmp_path_factory.mktemp("small_input")
    path = d / "userdays.csv"
    generate(3000, path, seed=11)
    return path


def _reset_dagster_defs_state_storage() -> None:
    """Dagster 1.13 leaves a disposed instance's defs-state storage in a context
    variable after ``with instance:`` blocks (its ``__exit__`` never closes the
    stack that set it), so later ``materialize`` calls fail with "Attempted to
    resolve undefined DagsterInstance weakref". Core tests never import Dagster."""
    if "dagster" not in sys.modules:
        return
    from dagster._core.storage.defs_state.base import _current_storage

    _current_storage.set(None)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    """Reset before each test's fixtures are set up: a module-scoped fixture's teardown
    (after the previous module's last test) can leave the storage behind too."""
    _reset_dagster_defs_state_storage()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem) -> None:
    """And after each test, so that a test's own instance does not reach the next one."""
    _reset_dagster_defs_state_storage()


def pytest_configure(config) -> None:
    """One shared cache folder (``HOMELOC_CACHE_DIR``) per test session, never the user's
    ``~/.cache/homeloc``: the tests' runs share what the lookups and figures cached, as the
    output folders of one user do."""
    import tempfile

    if not os.environ.get("HOMELOC_CACHE_DIR"):
        root = tempfile.mkdtemp(prefix="homeloc-test-cache-")
        os.environ["HOMELOC_CACHE_DIR"] = os.path.join(root, "homeloc")
        os.environ["XDG_CACHE_HOME"] = root
        config._homeloc_cache_root = root


def pytest_unconfigure(config) -> None:
    """Remove the session's cache folder (made by :func:`pytest_configure`)."""
    import shutil

    root = getattr(config, "_homeloc_cache_root", None)
    if root:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["compiled", "numpy"])
def hll_kernel(request):
    """Runs the test once with each grouped-union kernel: the compiled one and the numpy reference."""
    from homeloc_assets import hll

    with hll.use_kernel(request.param):
        yield request.param


@pytest.fixture()
def numpy_kernel():
    """The numpy reference of the grouped union (for tests of its own chunking)."""
    from homeloc_assets import hll

    with hll.use_kernel("numpy"):
        yield
