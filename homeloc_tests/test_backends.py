"""The backend registry is the one place that names the HLL backends."""

from __future__ import annotations

import subprocess
import sys

import pytest

from homeloc_assets.backends import BACKENDS, BackendError, HllBackend, make_backend, uses_postgres
from homeloc_assets.settings import Settings


def test_every_registered_backend_is_made_and_follows_the_protocol():
    from homeloc_assets.backends.postgres import PostgresSettings

    for name, entry in BACKENDS.items():
        backend = make_backend(name, PostgresSettings() if entry.uses_postgres else None)
        assert isinstance(backend, HllBackend), name  # connects lazily: nothing opened here
        backend.close()
    assert uses_postgres("postgres") and not uses_postgres("embedded")


def test_settings_and_the_cli_take_their_choices_from_the_registry(monkeypatch):
    import argparse

    from homeloc_assets.cli import _add_run

    parser = argparse.ArgumentParser()
    _add_run(parser.add_subparsers(dest="command"))
    run = parser._subparsers._group_actions[0].choices["run"]
    backend_flag = next(a for a in run._actions if "--backend" in a.option_strings)
    assert tuple(backend_flag.choices) == tuple(BACKENDS)
    monkeypatch.setitem(BACKENDS, "other", BACKENDS["embedded"])
    assert Settings(backend="other").validated().backend == "other"
    with pytest.raises(ValueError, match="choose 'embedded' or 'postgres' or 'other'"):
        Settings(backend="nope").validated()
    with pytest.raises(BackendError, match="unknown HLL backend 'nope'"):
        make_backend("nope")


def test_the_registry_loads_no_backend_module():
    """Importing the settings (every CLI call) loads no database driver."""
    code = ("import sys; import homeloc_assets.settings; "
            "print(any(m in sys.modules for m in ('homeloc_assets.backends.postgres', 'psycopg2')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
