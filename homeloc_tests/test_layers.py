"""Region layers: specs, H3 and polygon layers in one pass, equal to PostgreSQL's unions."""

from __future__ import annotations

import io
import pickle

import geopandas as gpd
import h3
import numpy as np
import pandas as pd
import pytest

from homeloc_assets.backends import EmbeddedBackend
from homeloc_assets.geo import CountryLookup, dissolve_countries, load_world_countries
from homeloc_assets.geo.layers import (
    LayerError,
    build_layer,
    layer_assets,
    load_layer,
    parse_layer,
    parse_layers,
)
from homeloc_assets.inference import process_batch
from homeloc_assets.inputs import plan_batches
from homeloc_tests.helpers import homeloc

EUROPE = ["Germany", "France", "Poland", "Austria", "Netherlands", "Czechia"]


@pytest.fixture(scope="module")
def world():
    countries = dissolve_countries(load_world_countries())
    return countries, CountryLookup.from_countries(countries)


@pytest.fixture(scope="module")
def regions_file(world, tmp_path_factory):
    """A polygon layer that covers some countries only, with its own column names,
    one region split into two rows (dissolved by name)."""
    countries, _ = world
    sub = countries[countries.country.isin(EUROPE)].reset_index(drop=True)
    parts = sub.explode(index_parts=False).reset_index(drop=True)
    gdf = gpd.GeoDataFrame({"NAME_X": "R-" + parts.country, "ID_X": "r" + parts.country_code},
                           geometry=parts.geometry, crs="EPSG:4326")
    path = tmp_path_factory.mktemp("layers") / "regions.gpkg"
    gdf.to_file(path, driver="GPKG")
    return path


def test_layer_specs_parse_and_explain_mistakes(tmp_path):
    assert parse_layer("cells=h3:7").resolution == 7
    s = parse_layer("states = /data/de.gpkg#GEN,AGS")
    assert (s.kind, s.path, s.name_column, s.code_column) == ("polygons", "/data/de.gpkg", "GEN", "AGS")
    assert parse_layer("nuts=x.parquet").name_column == "name"
    assert [x.name for x in parse_layers("a=h3:5; b=h3:6;")] == ["a", "b"]
    assert [x.name for x in parse_layers(["a=h3:5", "b=f.shp"])] == ["a", "b"]
    for bad, words in [("h3:7", "NAME=h3:RES"), ("Cells=h3:7", "lower-case"),
                       ("country=h3:2", "built-in"), ("c=h3:16", "0..15"), ("c=h3:x", "0..15"),
                       ("c=f.gpkg#onlyone", "NAME_COLUMN,CODE_COLUMN")]:
        with pytest.raises(LayerError, match=words):
            parse_layer(bad)
    with pytest.raises(LayerError, match="more than once"):
        parse_layers("a=h3:5;a=h3:6")
    with pytest.raises(LayerError, match="not found"):
        build_layer(parse_layer(f"x={tmp_path}/nope.gpkg"))


def test_polygon_layer_file_without_the_columns_is_refused(regions_file):
    with pytest.raises(LayerError, match=r"lacks column\(s\) name, code; it has"):
        build_layer(parse_layer(f"r={regions_file}"))




def _pg_unions(pg_conn, frame: pd.DataFrame) -> pd.DataFrame:
    """hll_cardinality(hll_union_agg) per (user_guid, region) in PostgreSQL."""
    buf = io.StringIO()
    frame[["user_guid", "region", "userday_hll"]].to_csv(buf, index=False, header=False)
    buf.seek(0)
    with pg_conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE lay (user_guid text, region text, h hll)")
        cur.copy_expert("COPY lay FROM STDIN WITH (FORMAT csv)", buf)
        cur.execute("SELECT user_guid, region, hll_cardinality(hll_union_agg(h)) FROM lay GROUP BY 1, 2")
        out = pd.DataFrame(cur.fetchall(), columns=["user_guid", "region_code", "pg"])
        cur.execute("DROP TABLE lay")
    return out


def test_h3_and_polygon_layers_in_one_pass_equal_postgresql(pg_conn, small_input, world, regions_file,
                                                            tmp_path):
    countries, lookup = world
    cells = parse_layer("cells=h3:6")
    regions = parse_layer(f"regions={regions_file}#NAME_X,ID_X")
    layers = [load_layer(cells, tmp_path), load_layer(regions, tmp_path)]
    layers = pickle.loads(pickle.dumps(layers))  # as the workers get them
    plan = plan_batches(small_input, 700)
    out = {a: [] for spec in (cells, regions) for a in layer_assets(spec.name)}
    homes = []
    for b in plan.batches:
        r = process_batch(small_input, b.start, b.end, countries["country"].to_numpy(),
                          countries["country_code"].to_numpy(), lookup, EmbeddedBackend(), layers)
        homes.append(r.homes.to_pandas())
        for name, table in r.layer_tables.items():
            out[name].append(table.to_pandas())
    got = {k: pd.concat(v, ignore_index=True) for k, v in out.items()}
    rows = pd.read_csv(small_input)

    # H3: every point has a cell; the cell is h3.latlng_to_cell's
    rows["region"] = [h3.latlng_to_cell(a, b, 6) for a, b in zip(rows.latitude, rows.longitude,
                                                                  strict=True)]
    pg = _pg_unions(pg_conn, rows)
    ud = got["user_region_userdays_cells"]
    assert list(ud.columns) == ["user_guid", "region", "region_code", "userdays", "locations"]
    m = pg.merge(ud, on=["user_guid", "region_code"], how="outer", indicator=True)
    assert (m._merge == "both").all() and len(m) == len(pg) > len(rows.user_guid.unique())
    np.testing.assert_array_equal(m.userdays.to_numpy(), m.pg.to_numpy())
    best = pg.sort_values(["user_guid", "pg", "region_code"], ascending=[True, False, True])
    best = best.drop_duplicates("user_guid")
    hm = best.merge(got["user_home_cells"], on="user_guid", suffixes=("_pg", ""))
    assert len(hm) == rows.user_guid.nunique()
    assert (hm.region_code_pg == hm.region_code).all()
    for col in ("total_userdays", "home_share", "runner_up_code", "margin", "tie"):
        assert col in hm.columns

    # polygons: only points inside a region take part; names via the chosen columns
    cidx = lookup.lookup(rows.longitude.to_numpy(), rows.latitude.to_numpy())
    country = np.where(cidx >= 0, countries["country_code"].to_numpy()[np.maximum(cidx, 0)], None)
    inside = pd.Series(country).isin(set(countries[countries.country.isin(EUROPE)].country_code))
    sub = rows[inside.to_numpy()].copy()
    sub["region"] = "r" + pd.Series(country[inside.to_numpy()], index=sub.index)
    pg = _pg_unions(pg_conn, sub)
    ud = got["user_region_userdays_regions"]
    assert set(ud.region) <= {f"R-{c}" for c in EUROPE}
    m = pg.merge(ud, on=["user_guid", "region_code"], how="outer", indicator=True)
    assert (m._merge == "both").all() and len(m) == len(pg) > 0
    np.testing.assert_array_equal(m.userdays.to_numpy(), m.pg.to_numpy())
    # the polygon layer built from countries gives the country layer's homes
    ch = pd.concat(homes).set_index("user_guid")
    rh = got["user_home_regions"].set_index("user_guid")
    both = rh.join(ch[["country_code"]])
    in_europe = both.country_code.isin(set(sub.region.str[1:]))
    assert in_europe.any()
    assert (both.region_code[in_europe] == "r" + both.country_code[in_europe]).all()


def test_layer_cache_is_reused_and_rebuilt_when_damaged(regions_file, tmp_path):
    spec = parse_layer(f"regions={regions_file}#NAME_X,ID_X")
    first = load_layer(spec, tmp_path)
    (cache,) = tmp_path.glob("layer-regions-*.npz")
    again = load_layer(spec, tmp_path)
    assert list(again.codes) == list(first.codes) and list(first.names) == sorted(first.names)
    cache.write_bytes(b"damaged")
    third = load_layer(spec, tmp_path)
    assert list(third.codes) == list(first.codes)
    lon, lat = np.array([13.4, 2.35, 0.0]), np.array([52.5, 48.85, 0.0])
    got = third.locate(lon, lat)
    assert list(got.codes[got.index[:2]]) == ["rDEU", "rFRA"] and got.index[2] == -1


@pytest.fixture(scope="module")
def halves_file(world, tmp_path_factory):
    """Germany split at 10.505 degrees east (off the 0.01 grid of the points) into DE-W and DE-E, plus France: a nested layer."""
    import shapely

    countries, _ = world
    de = countries[countries.country == "Germany"].geometry.iloc[0]
    fr = countries[countries.country == "France"].geometry.iloc[0]
    west = shapely.intersection(de, shapely.box(-180, -90, 10.505, 90))
    east = shapely.difference(de, west)
    gdf = gpd.GeoDataFrame({"name": ["Germany west", "Germany east", "France"],
                            "code": ["DE-W", "DE-E", "FR"]},
                           geometry=[west, east, fr], crs="EPSG:4326")
    path = tmp_path_factory.mktemp("halves") / "halves.gpkg"
    gdf.to_file(path, driver="GPKG")
    return path


def _homeloc(*args):
    return homeloc(*args, check=False)


def _argmax(pg: pd.DataFrame, key: str) -> pd.DataFrame:
    return (pg.sort_values(["user_guid", "pg", key], ascending=[True, False, True])
            .drop_duplicates("user_guid").set_index("user_guid"))


@pytest.mark.slow
def test_nested_study_region_classes_and_thresholds_equal_an_oracle(
        pg_conn, small_input, world, halves_file, tmp_path):
    out = tmp_path / "out"
    res = _homeloc("run", "--input", str(small_input), "--out", str(out), "--no-figures", "--quiet",
                   "--layer", f"halves={halves_file}", "--study-region", "halves=DE-E",
                   "--min-userdays", "3", "--min-share", "0.6", "--batch-users", "800")
    assert res.returncode == 0, res.stderr
    countries, lookup = world
    rows = pd.read_csv(small_input)
    cidx = lookup.lookup(rows.longitude.to_numpy(), rows.latitude.to_numpy())
    codes = countries["country_code"].to_numpy()
    rows["country"] = np.where(cidx >= 0, codes[np.maximum(cidx, 0)], None)
    names = dict(zip(countries.country_code, countries.country, strict=True))
    rows["region"] = rows.country
    country_pg = _pg_unions(pg_conn, rows[rows.country.notna()])
    country_pg["name"] = country_pg.region_code.map(names)
    home_country = _argmax(country_pg, "name")
    totals = _pg_total(pg_conn, rows[rows.country.notna()])
    de = rows.country == "DEU"
    half = rows[de].assign(region=np.where(rows.longitude[de] < 10.505, "DE-W", "DE-E"))
    half_pg = _pg_unions(pg_conn, half)
    home_half = _argmax(half_pg, "region_code")

    oracle = home_country[["region_code", "pg"]].rename(columns={"region_code": "cc", "pg": "days"})
    oracle = oracle.join(totals).join(home_half[["region_code"]].rename(columns={"region_code": "half"}))
    oracle["share"] = oracle.days / oracle.total
    undetermined = (oracle.total < 3) | (oracle.share < 0.6)
    expected = np.where(oracle.cc != "DEU", "International tourist",
                        np.where(oracle.half == "DE-E", "Local", "Domestic tourist"))
    oracle["cls"] = np.where(undetermined, "undetermined", expected)

    got = pd.read_parquet(out / "user_home_locations.parquet").set_index("user_guid")
    assert set(got.index) == set(oracle.index)
    assert (got.status.loc[oracle.index].eq("undetermined") == undetermined).all()
    cls = pd.read_csv(out / "user_classification.csv").set_index("user_guid").classification
    determined = oracle[oracle.cls != "undetermined"]
    assert set(cls.index) == set(determined.index)
    bad = determined[cls.loc[determined.index] != determined.cls]
    assert bad.empty, bad.join(cls).head()
    assert {"Local", "Domestic tourist", "International tourist"} <= set(cls)
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["study_region"] == "halves=DE-E"
    assert summary["locals"] == (determined.cls == "Local").sum()
    assert summary["domestic_tourists"] == (determined.cls == "Domestic tourist").sum()
    hh = pd.read_parquet(out / "user_home_halves.parquet")
    assert list(hh.columns) == ["user_guid", "region", "region_code", "userdays", "total_userdays",
                                "home_share", "runner_up_code", "margin", "tie", "status", "reason"]


def _pg_total(pg_conn, frame: pd.DataFrame) -> pd.DataFrame:
    t = _pg_unions(pg_conn, frame.assign(region="all"))
    return t.set_index("user_guid")[["pg"]].rename(columns={"pg": "total"})


@pytest.mark.slow
def test_a_wrong_study_region_or_layer_stops_before_the_batches(small_input, halves_file, tmp_path):
    res = _homeloc("run", "--input", str(small_input), "--out", str(tmp_path / "o"), "--quiet",
                   "--layer", f"halves={halves_file}", "--study-region", "halves=DE-X")
    assert res.returncode == 2 and "DE-X" in res.stderr and "DE-W" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = _homeloc("run", "--input", str(small_input), "--out", str(tmp_path / "o"), "--quiet",
                   "--study-region", "states=DE-SN")
    assert res.returncode == 2 and "no layer 'states'" in res.stderr
    res = _homeloc("run", "--input", str(small_input), "--out", str(tmp_path / "o"), "--quiet",
                   "--layer", f"bad={halves_file}#GEN,AGS")
    assert res.returncode == 2 and "GEN" in res.stderr
    assert not (tmp_path / "o" / "user_classification.csv").exists()


@pytest.mark.heavy
def test_sensitivity_counts_equal_separate_runs_and_validate_reports_accuracy(small_input, tmp_path):
    base, strict = tmp_path / "base", tmp_path / "strict"
    for out, extra in ((base, []), (strict, ["--min-userdays", "3", "--min-share", "0.6",
                                             "--min-margin", "1"])):
        r = _homeloc("run", "--input", str(small_input), "--out", str(out), "--no-figures",
                     "--quiet", *extra)
        assert r.returncode == 0, r.stderr
    r = _homeloc("sensitivity", "--out", str(base), "--grid-userdays", "0,3", "--grid-share",
                 "0,0.6", "--grid-margin", "0,1", "--no-figures")
    assert r.returncode == 0, r.stderr
    table = pd.read_csv(base / "analysis" / "sensitivity.csv")
    assert len(table) == 8
    row = table[(table.min_userdays == 3) & (table.min_share == 0.6) & (table.min_margin == 1)].iloc[0]
    cls = pd.read_csv(strict / "user_classification.csv").classification.value_counts()
    import json

    summary = json.loads((strict / "summary.json").read_text())
    assert row.locals == cls.get("Local", 0) == summary["locals"]
    assert row.tourists == cls.get("Tourist", 0) == summary["tourists"]
    assert row.undetermined == summary["undetermined"] > 0
    r = _homeloc("validate", "--out", str(base), "--truth", f"{small_input}.truth.csv",
                 "--no-figures")
    assert r.returncode == 0 and "accuracy" in r.stdout, r.stderr
    v = pd.read_csv(base / "analysis" / "validation.csv")
    chosen = v[(v.min_userdays == 0) & (v.min_share == 0) & (v.min_margin == 0)].iloc[0]
    truth = pd.read_csv(f"{small_input}.truth.csv")
    assert chosen.truth_Local_as_Local + chosen.truth_Local_as_Tourist + chosen.truth_Local_as_undetermined \
        == (truth.classification == "Local").sum()
    assert 0.9 < chosen.accuracy <= 1.0


def test_a_point_on_a_shared_border_is_in_neither_region(halves_file, tmp_path):
    layer = load_layer(parse_layer(f"halves={halves_file}"), tmp_path)
    got = layer.locate(np.array([10.505, 10.4, 10.6]), np.array([51.0, 51.0, 51.0]))
    assert got.index[0] == -1
    assert list(got.codes[got.index[1:]]) == ["DE-W", "DE-E"]
