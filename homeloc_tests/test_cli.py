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
