"""The platform end to end: a batch with no Dagster, Dagster materialisation, `homeloc run`."""

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from homeloc_assets.backends import EmbeddedBackend
from homeloc_assets.catalog import Catalog
from homeloc_assets.definitions import build_definitions
from homeloc_assets.geo import CountryLookup, dissolve_countries, load_world_countries
from homeloc_assets.inference import process_batch
from homeloc_assets.inputs import plan_batches
from homeloc_assets.settings import Settings
from homeloc_tests.helpers import homeloc


@pytest.fixture(scope="module")
def world():
    countries = dissolve_countries(load_world_countries())
    return countries, CountryLookup.from_countries(countries)


def truth(path: Path) -> pd.DataFrame:
    return pd.read_csv(f"{path}.truth.csv")


@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_a_batch_needs_no_dagster(small_input, world):
    countries, lookup = world
    plan = plan_batches(small_input, 1000)
    homes = []
    for b in plan.batches:
        r = process_batch(small_input, b.start, b.end, countries["country"].to_numpy(),
                          countries["country_code"].to_numpy(), lookup, EmbeddedBackend())
        assert r.rejects.num_rows == 0
        homes.append(r.homes.to_pandas())
    got = pd.concat(homes)
    t = truth(small_input)
    assert len(got) == len(t) == got.user_guid.nunique()
    m = t.merge(got, on="user_guid")
    assert (m.home_country == m.country).all()


@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_materialize_one_partition_with_dagster(small_input, tmp_path):
    settings = Settings(output_dir=str(tmp_path / "out"), batch_users=1000, workers=1)
    defs = build_definitions(settings)
    instance = dg.DagsterInstance.ephemeral()
    _, keys = Catalog(settings.storage_path).register(small_input, settings.batch_users)
    instance.add_dynamic_partitions("user_batches", keys)
    assets, resources = defs.assets, defs.resources
    assert dg.materialize(assets, selection=["world_countries", "countries"], instance=instance,
                          resources=resources).success
    batch_assets = ["user_locations", "user_country_userdays", "user_home_locations",
                    "rejected_rows"]  # one step makes all four
    res = dg.materialize(assets, selection=batch_assets, partition_key=keys[1],
                         instance=instance, resources=resources)
    assert res.success
    homes = pq.read_table(settings.storage_path / "assets" / "user_home_locations"
                          / f"{keys[1]}.parquet").to_pandas()
    assert 0 < len(homes) <= 1100
    checks = {e.check_name: e.passed for e in res.get_asset_check_evaluations()}
    assert checks == {"one_home_per_user": True, "points_in_a_country": True}
    # the unpartitioned downstream refuses to run while batches are missing
    res = dg.materialize(assets, selection=["user_classification"], instance=instance,
                         resources=resources, raise_on_error=False)
    assert not res.success


@pytest.mark.slow
def test_homeloc_run_end_to_end(small_input, tmp_path):
    out = tmp_path / "out"
    res = homeloc("run", "--input", str(small_input), "--out", str(out), "--batch-users", "700",
                  "--quiet")
    assert "Locals" in res.stdout and "Tourists" in res.stdout
    t = truth(small_input)
    homes = pd.read_csv(out / "user_home_locations.csv")
    assert list(homes.columns) == ["user_guid", "country"]
    assert (homes.user_guid != "user_guid").all()  # one header
    assert len(homes) == len(t) == homes.user_guid.nunique()
    m = t.merge(homes, on="user_guid")
    assert (m.home_country == m.country).all()
    cls = pd.read_csv(out / "user_classification.csv")
    assert list(cls.columns) == ["user_guid", "classification"]
    assert set(cls.classification) == {"Local", "Tourist"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["locals"] == (cls.classification == "Local").sum()
    assert summary["tourists"] == (cls.classification == "Tourist").sum()
    assert summary["users"] == len(t) and summary["rejected_rows"] == 0
    assert (t.merge(cls, on="user_guid", suffixes=("_t", "")).eval(
        "classification_t == classification")).all()
    cu = pd.read_parquet(out / "user_country_userdays.parquet")
    assert {"user_guid", "country", "country_code", "userdays"} <= set(cu.columns)
    hp = pd.read_parquet(out / "user_home_locations.parquet")
    assert {"user_guid", "country", "country_code", "userdays", "home_share", "runner_up",
            "margin", "tie"} <= set(hp.columns)
    rej = pd.read_csv(out / "rejected_rows.csv")
    assert list(rej.columns[:2]) == ["line", "reason"] and len(rej) == 0
    # same command again: resumes, keeps the batches, same bytes
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    res2 = homeloc("run", "--input", str(small_input), "--out", str(out), "--batch-users", "700")
    assert "finished batch(es) kept" in res2.stderr
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert before == after


@pytest.mark.slow
@pytest.mark.heavy  # CI time (45 s); batch-size independence is also tested per batch and in test_landscape
def test_results_do_not_depend_on_batch_size_or_workers(small_input, tmp_path):
    outs = []
    for bu, workers in [(3000, 1), (250, 2), (97, 2)]:
        out = tmp_path / f"out_{bu}_{workers}"
        homeloc("run", "--input", str(small_input), "--out", str(out), "--batch-users", str(bu),
                "--workers", str(workers), "--quiet")
        outs.append(out)
    for name in ["user_home_locations.csv", "user_classification.csv"]:
        ref = (outs[0] / name).read_bytes()
        assert all((o / name).read_bytes() == ref for o in outs[1:]), name
    ref = pd.read_parquet(outs[0] / "user_country_userdays.parquet")
    for o in outs[1:]:
        pd.testing.assert_frame_equal(pd.read_parquet(o / "user_country_userdays.parquet"), ref)


@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_study_country_by_code_and_min_userdays(small_input, tmp_path):
    out = tmp_path / "out"
    homeloc("run", "--input", str(small_input), "--out", str(out), "--study-country", "fra",
            "--min-userdays", "5", "--quiet")
    t = truth(small_input)
    homes = pd.read_parquet(out / "user_home_locations.parquet")
    cls = pd.read_csv(out / "user_classification.csv")
    m = homes.merge(cls, on="user_guid", how="left")
    kept = m[m.total_userdays >= 5]
    assert kept.classification.notna().all()
    assert ((kept.country_code == "FRA") == (kept.classification == "Local")).all()
    assert m[m.total_userdays < 5].classification.isna().all()
    assert len(t) == len(homes)


@pytest.mark.parametrize(
    "content, words",
    [
        (b"user_guid,lat,longitude,userday_hll\na,1,2,\\x138b7f\n", ["latitude"]),
        (b"", ["empty"]),
    ],
)
@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_structural_damage_stops_before_any_export(tmp_path, content, words):
    src = tmp_path / "bad.csv"
    src.write_bytes(content)
    out = tmp_path / "out"
    res = homeloc("run", "--input", str(src), "--out", str(out), check=False)
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("homeloc: error:") and all(w in last.lower() for w in words), last
    assert not any(p.is_file() for p in out.glob("*")) if out.exists() else True


def test_missing_input_file_is_a_usage_error(tmp_path):
    res = homeloc("run", "--input", str(tmp_path / "nope.csv"), "--out", str(tmp_path), check=False)
    assert res.returncode == 2 and "not found" in res.stderr


@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_unsorted_file_fails_with_the_line_and_no_exports(small_input, tmp_path):
    lines = small_input.read_bytes().splitlines(keepends=True)
    body = lines[1:]
    bad = tmp_path / "unsorted.csv"
    bad.write_bytes(lines[0] + b"".join(body[len(body) // 2:] + body[: len(body) // 2]))
    out = tmp_path / "out"
    res = homeloc("run", "--input", str(bad), "--out", str(out), "--batch-users", "100000",
                  check=False)
    assert res.returncode != 0
    msg = res.stderr.strip().splitlines()[-1]
    assert "sort" in msg.lower() and "line" in msg.lower(), msg
    assert not (out / "user_home_locations.csv").exists()


@pytest.mark.slow
def test_exports_equal_across_backends(pg_dsn, small_input, tmp_path):
    outs = {}
    for backend in ["embedded", "postgres"]:
        out = tmp_path / backend
        homeloc("run", "--input", str(small_input), "--out", str(out), "--backend", backend,
                "--batch-users", "1500", "--quiet", env={"HOMELOC_PG_DSN": pg_dsn})
        outs[backend] = out
    for name in ["user_home_locations.csv", "user_classification.csv"]:
        assert (outs["embedded"] / name).read_bytes() == (outs["postgres"] / name).read_bytes()
    a = pd.read_parquet(outs["embedded"] / "user_country_userdays.parquet")
    b = pd.read_parquet(outs["postgres"] / "user_country_userdays.parquet")
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.slow
def test_userdays_equal_postgresql_hll_union_agg(pg_conn, small_input, tmp_path):
    """Per user and country, PostgreSQL's own hll_union_agg on the same points."""
    out = tmp_path / "out"
    homeloc("run", "--input", str(small_input), "--out", str(out), "--quiet")
    locs = pq.read_table(list((out / ".homeloc" / "assets" / "user_locations").glob("*.parquet"))[0])
    locs = locs.to_pandas()
    locs = locs[locs.country.notna()]
    with pg_conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE loc (user_guid text, country text, h hll)")
        rows = [(g, c, "\\x" + bytes(h).hex()) for g, c, h in
                zip(locs.user_guid, locs.country, locs.userday_hll, strict=True)]
        cur.executemany("INSERT INTO loc VALUES (%s, %s, %s::hll)", rows)
        cur.execute("SELECT user_guid, country, hll_cardinality(hll_union_agg(h)) FROM loc "
                    "GROUP BY 1, 2")
        pg = pd.DataFrame(cur.fetchall(), columns=["user_guid", "country", "pg"])
        cur.execute("DROP TABLE loc")
    cu = pd.read_parquet(out / "user_country_userdays.parquet")
    m = pg.merge(cu, on=["user_guid", "country"], how="left")
    assert len(m) == len(pg) > 0
    np.testing.assert_array_equal(m.userdays.to_numpy(), m.pg.to_numpy())
    # and the home is PostgreSQL's argmax (ties by name)
    best = (pg.sort_values(["user_guid", "pg", "country"], ascending=[True, False, True])
            .drop_duplicates("user_guid"))
    homes = pd.read_csv(out / "user_home_locations.csv")
    m2 = best.merge(homes, on="user_guid", suffixes=("_pg", ""))
    assert (m2.country_pg == m2.country).all()


@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_a_user_in_two_input_files_fails_the_no_user_twice_check(tmp_path):
    from homeloc_assets import hll

    def days(*ds):
        h = hll.empty()
        for d in ds:
            h = hll.add(h, hll.hash_bigint(d))
        return hll.to_hex(h)

    header = "user_guid,latitude,longitude,userday_hll\n"
    a = tmp_path / "a.csv"
    a.write_text(header + f"u1,52.52,13.40,{days(1, 2)}\nu2,48.85,2.35,{days(3)}\n")
    b = tmp_path / "b.csv"
    b.write_text(header + f"u2,52.52,13.40,{days(4)}\nu3,41.90,12.50,{days(5)}\n")
    settings = Settings(output_dir=str(tmp_path / "out"), workers=1)
    defs = build_definitions(settings)
    instance = dg.DagsterInstance.ephemeral()
    catalog = Catalog(settings.storage_path)
    keys = catalog.register(a, 10)[1] + catalog.register(b, 10)[1]
    instance.add_dynamic_partitions("user_batches", keys)
    assets, resources = defs.assets, defs.resources
    assert dg.materialize(assets, selection=["world_countries", "countries"], instance=instance,
                          resources=resources).success
    for k in keys:
        assert dg.materialize(assets, selection=["user_locations", "user_country_userdays",
                                                 "user_home_locations", "rejected_rows"],
                              partition_key=k, instance=instance, resources=resources).success
    res = dg.materialize(assets, selection=["user_classification"], instance=instance,
                         resources=resources)
    checks = {e.check_name: e.passed for e in res.get_asset_check_evaluations()}
    assert checks["no_user_twice"] is False
    assert checks["reject_share_below_limit"] is True
