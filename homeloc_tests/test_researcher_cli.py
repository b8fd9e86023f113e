"""What a researcher sees first: help, messages, the per-country table, each batch's own
counts in the UI, and `homeloc ui` on the instance `homeloc run` filled."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from homeloc_tests.helpers import homeloc


@pytest.fixture(scope="module")
def finished(tmp_path_factory, small_input):
    out = tmp_path_factory.mktemp("researcher") / "out"
    res = homeloc("run", "--input", str(small_input), "--out", str(out), "--batch-users", "700",
                  "--workers", "2", "--no-landscape", "--study-country", "deu")
    return out, res


@pytest.mark.slow
def test_each_batch_partition_shows_its_own_counts(finished):
    out, _ = finished
    instance = dg.DagsterInstance.from_config(str(out / ".homeloc" / "dagster_home"))
    stats = {p.stem: json.loads(p.read_text())
             for p in (out / ".homeloc" / "batch_stats").glob("*.json")}
    records = instance.fetch_materializations(dg.AssetKey("user_home_locations"), limit=100).records
    seen = {r.partition_key: r.asset_materialization.metadata for r in records}
    assert len(seen) == len(stats) > 1
    for key, meta in seen.items():
        assert meta["users"].value == stats[key]["users"]
        assert meta["users_with_home"].value == stats[key]["users_with_home"]
    summary = json.loads((out / "summary.json").read_text())
    assert sum(m["users"].value for m in seen.values()) == summary["users"]
    assert len({m["users"].value for m in seen.values()}) > 1  # not one total for every batch


@pytest.mark.slow
def test_home_countries_csv_adds_up_to_the_classification(finished):
    out, res = finished
    table = pd.read_csv(out / "home_countries.csv", keep_default_na=False)
    assert list(table.columns) == ["country", "code", "users", "locals", "tourists",
                                   "undetermined", "share"]
    homes = pd.read_parquet(out / "user_home_locations.parquet")
    cls = pd.read_csv(out / "user_classification.csv")
    per_country = homes.groupby("country_code").size()
    assert dict(zip(table.code, table.users, strict=True)) == per_country.to_dict()
    summary = json.loads((out / "summary.json").read_text())
    assert table.locals.sum() == summary["locals"] == (cls.classification == "Local").sum()
    assert table.tourists.sum() == summary["tourists"]
    assert table.loc[table.code == "DEU", "tourists"].item() == 0
    assert (table.loc[table.code != "DEU", "locals"] == 0).all()
    assert table.share.sum() == pytest.approx(1.0)
    assert list(table.users) == sorted(table.users, reverse=True)
    # the summary names the study country as resolved, and says where the figures went
    assert summary["study_country"] == "Germany" and summary["study_country_code"] == "DEU"
    assert f"figures            {(out / 'figures').resolve()}" in res.stdout


def test_help_describes_the_commands():
    top = homeloc("--help").stdout
    assert "``" not in top and "Local/Tourist" in top
    run = homeloc("run", "--help").stdout
    assert "study country" in run and "Exit codes" in run


@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_a_header_error_names_the_file_once_without_python_lists(tmp_path):
    src = tmp_path / "bad.csv"
    src.write_text("user_guid,lat,lon,hll\n")
    res = homeloc("run", "--input", str(src), "--out", str(tmp_path / "out"), check=False)
    assert res.returncode == 2
    line = res.stderr.strip().splitlines()[-1]
    assert line.count(str(src)) == 1 and "[" not in line, line
    assert "missing column(s) latitude, longitude, userday_hll" in line


@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_an_unknown_study_country_stops_before_planning(small_input, tmp_path):
    res = homeloc("run", "--input", str(small_input), "--out", str(tmp_path / "out"),
                  "--study-country", "Germani", check=False)
    assert res.returncode == 2
    assert "batch(es)" not in res.stderr  # the plan line never came
    last = res.stderr.strip().splitlines()[-1]
    assert "Close matches: Germany" in last and "[" not in last, last
    assert not (tmp_path / "out" / ".homeloc" / "plans").exists()


@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_ui_serves_the_instance_homeloc_run_uses_and_says_what_it_watches(tmp_path, monkeypatch):
    from homeloc_assets import cli

    monkeypatch.setenv("DAGSTER_HOME", "")  # restored afterwards: ui_environment sets it
    for name in ("HOMELOC_OUTPUT_DIR", "HOMELOC_INPUT_DIR", "HOMELOC_STORAGE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "drop").mkdir()
    (tmp_path / "drop" / "a.csv").write_text("user_guid,latitude,longitude,userday_hll\n")
    args = argparse.Namespace(host="127.0.0.1", port=3999, out=None, input=None,
                              input_dir=None, dagster_home=None)
    env, line = cli.ui_environment(args)
    home = Path(env["DAGSTER_HOME"])
    assert home == (tmp_path / "out" / ".homeloc" / "dagster_home").resolve()
    assert (home / "dagster.yaml").read_text() == cli.PROJECT_DAGSTER_YAML.read_text()
    assert (tmp_path / "data" / "input").is_dir()  # the watched folder exists
    assert f"watches {(tmp_path / 'data' / 'input').resolve()} (0 CSV file(s) now)" in line
    args.input = str(tmp_path / "drop" / "a.csv")
    env, line = cli.ui_environment(args)
    assert env["HOMELOC_INPUT_DIR"] == str((tmp_path / "drop").resolve())
    assert "(1 CSV file(s) now)" in line


@pytest.mark.slow
def test_a_launchpad_study_country_travels_to_every_export_and_figure(small_input, tmp_path):
    """Classify with France in the launchpad, then rebuild the rest with the defaults."""
    from homeloc_assets.batch_runner import batch_assets
    from homeloc_assets.catalog import Catalog
    from homeloc_assets.definitions import build_definitions
    from homeloc_assets.publish import verify
    from homeloc_assets.settings import Settings

    settings = Settings(input_dir=str(small_input.parent), output_dir=str(tmp_path / "out"),
                        workers=1)
    defs = build_definitions(settings)
    instance = dg.DagsterInstance.ephemeral()
    _, keys = Catalog(settings.storage_path).register(small_input, settings.batch_users)
    instance.add_dynamic_partitions("user_batches", keys)
    # the launchpad shows the resource's config filled in; the researcher edits one field
    shown = {k: getattr(defs.resources["homeloc"], k)
             for k in ("input_dir", "output_dir", "storage_dir", "workers")}
    france = {"resources": {"homeloc": {"config": {**shown, "study_country": "France"}}}}
    for selection, key, cfg in ((["world_countries", "countries"], None, None),
                                (batch_assets(), keys[0], None),
                                (["user_classification"], None, france)):
        assert dg.materialize(defs.assets, selection=selection, partition_key=key,
                              instance=instance, resources=defs.resources,
                              run_config=cfg).success
    rest = ["homeloc_exports", "classification_report", "tourist_origins_map",
            "study_country_share_map", "home_rule_sensitivity", "homeloc_published"]
    res = dg.materialize(defs.assets, selection=rest, instance=instance, resources=defs.resources,
                         run_config={"ops": {"homeloc_published": {"config": {"landscape": False}}}})
    assert res.success
    out = Path(settings.output_dir)
    assert verify(out) == []
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["study_country"], summary["study_country_code"]) == ("France", "FRA")
    homes = pd.read_parquet(out / "user_home_locations.parquet")
    cls = pd.read_csv(out / "user_classification.csv").merge(homes, on="user_guid")
    assert ((cls.country_code == "FRA") == (cls.classification == "Local")).all()
    assert summary["locals"] == (homes.country_code == "FRA").sum() > 0
    table = pd.read_csv(out / "home_countries.csv", keep_default_na=False)
    assert table.loc[table.locals > 0, "code"].tolist() == ["FRA"]
    meta = {e.asset_key.to_user_string(): e.materialization.metadata
            for e in res.get_asset_materialization_events()}
    assert meta["classification_report"]["study_country"].value == "France (FRA)"
    assert meta["classification_report"]["local"].value == summary["locals"]
