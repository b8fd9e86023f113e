"""The command line: hll inspection, own countries file, settings from the environment."""

import os
import subprocess

import geopandas as gpd
import pandas as pd
import pytest
from shapely.geometry import box

from homeloc_assets import hll
from homeloc_assets.settings import Settings
from homeloc_tests.helpers import HOMELOC, homeloc
from homeloc_tests.helpers import days_hex as days


def run(*args: str, stdin: str | None = None, env: dict | None = None):
    return homeloc(*args, stdin=stdin, env=env, check=False, timeout=300)


@pytest.mark.slow
def test_hll_card_union_print():
    a, b = days(1, 2, 3), days(3, 4)
    r = run("hll", "card", a, b)
    assert r.returncode == 0 and r.stdout.split() == ["3.0", "2.0"]
    r = run("hll", "union", stdin=f"{a}\n{b}\n")
    assert r.returncode == 0 and hll.cardinality(r.stdout.strip()) == 4.0
    r = run("hll", "print", a)
    assert r.returncode == 0 and "EXPLICIT" in r.stdout


def test_hll_garbage_is_a_clear_error():
    r = run("hll", "card", "\\xzz")
    assert r.returncode == 2 and r.stderr.startswith("homeloc: error:")
    assert "Traceback" not in r.stderr


def test_settings_from_environment_and_bad_values():
    s = Settings.from_env({"HOMELOC_BATCH_USERS": "123", "HOMELOC_HLL_BACKEND": "postgres",
                           "HOMELOC_STUDY_COUNTRY": "FRA", "HOMELOC_MIN_USERDAYS": "2.5"})
    assert (s.batch_users, s.backend, s.study_country, s.min_userdays) == (123, "postgres",
                                                                           "FRA", 2.5)
    with pytest.raises(ValueError, match="HOMELOC_BATCH_USERS"):
        Settings.from_env({"HOMELOC_BATCH_USERS": "many"})
    with pytest.raises(ValueError, match="HOMELOC_HLL_BACKEND"):
        Settings.from_env({"HOMELOC_HLL_BACKEND": "redis"})
    for env in [{"HOMELOC_PG_PORT": "0"}, {"HOMELOC_PG_RETRIES": "-1"},
                {"HOMELOC_SENSOR_INTERVAL_SECONDS": "0"}]:
        with pytest.raises(ValueError, match=next(iter(env))):
            Settings.from_env(env)


@pytest.mark.slow
def test_own_countries_file(tmp_path):
    """A user's own GeoPackage with named columns replaces Natural Earth."""
    gpkg = tmp_path / "lands.gpkg"
    gpd.GeoDataFrame(
        {"NAME_EN": ["Aland", "Bland"], "ISO": ["AAA", "BBB"]},
        geometry=[box(0, 0, 10, 10), box(10, 0, 20, 10)], crs="EPSG:4326",
    ).to_file(gpkg, driver="GPKG")
    rows = [
        ("u1", 5, 5, days(1, 2, 3)), ("u1", 5, 15, days(4)),      # Aland: Local
        ("u2", 5, 15, days(1, 2)), ("u2", 5, 16, days(3, 4)),     # Bland: Tourist
        ("u3", 50, 50, days(1)),                                   # nowhere: no home
    ]
    src = tmp_path / "in.csv"
    src.write_text("user_guid,latitude,longitude,userday_hll\n"
                   + "".join(f"{g},{la},{lo},{h}\n" for g, la, lo, h in rows))
    out = tmp_path / "out"
    r = run("run", "--input", str(src), "--out", str(out), "--study-country", "aaa", "--quiet",
            env={"HOMELOC_COUNTRIES_PATH": str(gpkg), "HOMELOC_COUNTRIES_NAME_COLUMN": "NAME_EN",
                 "HOMELOC_COUNTRIES_CODE_COLUMN": "ISO"})
    assert r.returncode == 0, r.stderr
    homes = pd.read_csv(out / "user_home_locations.csv")
    assert homes.values.tolist() == [["u1", "Aland"], ["u2", "Bland"]]
    cls = pd.read_csv(out / "user_classification.csv")
    assert cls.values.tolist() == [["u1", "Local"], ["u2", "Tourist"]]
    hp = pd.read_parquet(out / "user_home_locations.parquet")
    assert hp.set_index("user_guid").loc["u2", "userdays"] == 4.0
    assert '"points_in_no_country": 1' in (out / "summary.json").read_text()


@pytest.mark.slow
def test_unknown_study_country_names_close_matches(small_input, tmp_path):
    r = run("run", "--input", str(small_input), "--out", str(tmp_path / "o"), "--study-country",
            "Germny", "--quiet")
    assert r.returncode != 0
    assert "Germany" in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "o" / "user_classification.csv").exists()


@pytest.mark.slow
@pytest.mark.heavy  # CI time; test_ui_walk.py starts homeloc ui for real
def test_homeloc_ui_serves_the_project(tmp_path):
    """`homeloc ui` starts dagster dev on the workspace; /server_info answers."""
    import signal
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env.update(DAGSTER_HOME=str(tmp_path), HOMELOC_OUTPUT_DIR=str(tmp_path / "out"))
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    proc = subprocess.Popen([*HOMELOC, "ui", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        body = None
        while time.monotonic() < deadline and body is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as r:
                    body = r.read().decode()
            except OSError:
                time.sleep(1)
        assert body and "dagster_webserver_version" in body
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


# ------------------------------------------------- one configuration model (issue 12)
def _readme_configuration_rows() -> list[list[str]]:
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| ")]
    return rows[1:]  # without the header


def test_readme_configuration_table_is_the_settings_model():
    """Exactly the model's variables (and the ones read outside it, like the password) are
    listed, one per row, with the model's default and flag."""
    from homeloc_assets.settings import OTHER_ENV, options, shown_default

    table = _readme_configuration_rows()
    rows = {r[0].strip("`"): r for r in table}
    assert len(rows) == len(table) - sum(r[0] == "—" for r in table) + 1, "a variable twice"
    model = {opt.env: (f, opt) for f, opt in options() if opt.env}
    assert set(rows) - {"—"} == set(model) | set(OTHER_ENV)
    for env, (f, opt) in model.items():
        _, flag, default, meaning = rows[env]
        assert default.strip("`") == (shown_default(f.name) or "—"), env
        assert (flag.split()[0].strip("`") if flag != "—" else None) == opt.flag, env
        assert meaning, env
    flag_only = {r[1].strip("`") for r in table if r[0] == "—"}
    assert flag_only == {opt.flag for _, opt in options() if opt.flag and not opt.env}


def test_resources_are_views_of_the_settings():
    """HomelocConfig holds the ``run`` settings and HllBackendResource the ``backend`` ones,
    with the same types, defaults and help; the heal/sensor settings are neither's."""
    from typing import get_type_hints

    from homeloc_assets.defs.resources import HllBackendResource, HomelocConfig
    from homeloc_assets.settings import DEFAULTS, options

    hints = get_type_hints(Settings)
    for resource, group, extra in [(HomelocConfig, "run", set()),
                                   (HllBackendResource, "backend", {"pg_password_env"})]:
        names = set(DEFAULTS.group(group))
        assert set(resource.model_fields) == names | extra, resource
        res_hints = get_type_hints(resource)
        for name in names:
            f = resource.model_fields[name]
            assert f.default == getattr(DEFAULTS, name), name
            assert res_hints[name] is hints[name], name
    for f, opt in options():
        if opt.env and f.name in HomelocConfig.model_fields:
            assert opt.env in HomelocConfig.model_fields[f.name].description
    # a resource turns back into the same settings, backend included
    s = Settings.from_env({"HOMELOC_HLL_BACKEND": "postgres", "HOMELOC_PG_PORT": "5433",
                           "HOMELOC_STUDY_COUNTRY": "FRA"})
    joined = HomelocConfig.from_settings(s).settings_with(HllBackendResource.from_settings(s))
    assert (joined.backend, joined.pg_port, joined.study_country) == ("postgres", 5433, "FRA")


def test_run_flags_are_made_from_the_settings():
    import argparse

    from homeloc_assets.cli import _add_run, setting_changes
    from homeloc_assets.settings import options

    parser = argparse.ArgumentParser()
    _add_run(parser.add_subparsers(dest="command"))
    run_parser = parser._subparsers._group_actions[0].choices["run"]
    actions = {a.option_strings[0]: a for a in run_parser._actions if a.option_strings}
    for f, opt in options():
        if opt.flag:
            assert actions[opt.flag].dest == f.name and opt.help in actions[opt.flag].help
            if opt.env:
                assert opt.env in actions[opt.flag].help
    args = parser.parse_args(["run", "--input", "x.csv", "--layer", "a=h3:5", "--layer",
                              "b=h3:6", "--no-landscape", "--dask", "tcp://h:1",
                              "--batch-users", "7", "--backend", "postgres"])
    assert setting_changes(args) == {"layers": "a=h3:5;b=h3:6", "landscape": False,
                                     "dask_scheduler": "tcp://h:1", "batch_users": 7,
                                     "backend": "postgres"}
    assert setting_changes(parser.parse_args(["run", "--input", "x.csv"])) == {}


def test_cli_does_not_write_the_backend_into_the_environment():
    from pathlib import Path

    import homeloc_assets.cli as cli

    text = Path(cli.__file__).read_text()
    assert 'os.environ["HOMELOC' not in text and "os.environ['HOMELOC" not in text


def test_postgres_settings_come_from_the_model_without_the_password():
    from homeloc_assets.backends import PostgresSettings

    env = {"HOMELOC_PG_PORT": "5433", "HOMELOC_PG_USER": "me", "HOMELOC_PG_RETRIES": "2"}
    pg = PostgresSettings.from_env(env)
    assert (pg.port, pg.user, pg.retries, pg.host) == (5433, "me", 2, "127.0.0.1")
    s = Settings.from_env({"HOMELOC_PG_DSN": "postgresql://me:s3cr3t-pw@db:5432/x"})
    assert "s3cr3t" not in s.pg_dsn and "s3cr3t" not in repr(s)
    with pytest.raises(ValueError, match="HOMELOC_PG_PORT"):
        PostgresSettings.from_env({"HOMELOC_PG_PORT": "fivefour"})


def test_connection_parts_from_the_environment_are_env_vars(monkeypatch):
    """In the loaded definitions a connection part set in the environment is a ``dg.EnvVar``:
    Dagster resolves it when a run starts."""
    import dagster as dg

    from homeloc_assets.defs.resources import HllBackendResource

    monkeypatch.setenv("HOMELOC_PG_PORT", "5433")
    monkeypatch.setenv("HOMELOC_PG_HOST", "db.example")
    r = HllBackendResource.from_settings(Settings.from_env(), env_vars=True)
    seen = {}

    @dg.asset
    def probe(hll_backend: HllBackendResource):
        seen.update(host=hll_backend.pg_host, port=hll_backend.pg_port,
                    db=hll_backend.pg_db)

    assert dg.materialize([probe], resources={"hll_backend": r}).success
    assert seen == {"host": "db.example", "port": 5433, "db": "postgres"}


def test_sensor_and_heal_settings_come_from_the_model():
    env = {**os.environ, "HOMELOC_HEAL_CRON": "0 3 * * *", "HOMELOC_HEAL_TIMEZONE": "Europe/Berlin",
           "HOMELOC_SENSOR_SETTLE_SECONDS": "7"}
    code = ("from homeloc_assets.defs import schedules, sensors;"
            "s = schedules.homeloc_nightly_heal;"
            "print(s.cron_schedule, s.execution_timezone, sensors.SETTLE_SECONDS)")
    import sys

    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "3", "*", "*", "*", "Europe/Berlin", "7"]
