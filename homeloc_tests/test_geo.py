"""Countries (Natural Earth) and the grid lookup, checked against the exact sjoin 'within'."""

from __future__ import annotations

import pickle

import geopandas as gpd
import numpy as np
import pytest
import shapely

from homeloc_assets.geo import (
    CountryError,
    CountryLookup,
    dissolve_countries,
    exact_lookup,
    load_world_countries,
    resolve_country,
)


@pytest.fixture(scope="module")
def countries():
    return dissolve_countries(load_world_countries())


@pytest.fixture(scope="module")
def lookup(countries):
    return CountryLookup.from_countries(countries)


def test_countries_codes_and_validity(countries):
    assert list(countries.columns) == ["country", "country_code", "geometry"]
    assert countries.crs.to_epsg() == 4326
    assert list(countries.index) == list(range(len(countries)))
    assert list(countries.country) == sorted(countries.country)
    assert not countries.country.duplicated().any()
    assert not countries.country_code.duplicated().any()
    assert countries.geometry.is_valid.all()
    by = dict(zip(countries.country, countries.country_code, strict=True))
    assert by["Germany"] == "DEU" and by["France"] == "FRA" and by["Norway"] == "NOR"
    assert by["Kosovo"] == "KOS"
    assert resolve_country(countries, "germany") == ("Germany", "DEU")
    assert resolve_country(countries, "fra") == ("France", "FRA")
    with pytest.raises(CountryError, match="Germany"):
        resolve_country(countries, "Germny")


def test_custom_file_and_missing_columns(tmp_path):
    gdf = gpd.GeoDataFrame(
        {"NAME": ["A", "B"], "CODE": ["AAA", "BBB"]},
        geometry=[shapely.box(0, 0, 1, 1), shapely.box(1, 0, 2, 1)],
        crs="EPSG:4326",
    )
    path = tmp_path / "c.gpkg"
    gdf.to_file(path)
    w = load_world_countries(path, name_column="NAME", code_column="CODE")
    assert list(w.country) == ["A", "B"] and list(w.country_code) == ["AAA", "BBB"]
    with pytest.raises(CountryError, match="ADMIN"):
        load_world_countries(path)


def test_dissolve_is_deterministic(countries):
    again = dissolve_countries(load_world_countries())
    assert list(again.country) == list(countries.country)
    assert all(shapely.equals_exact(again.geometry.values, countries.geometry.values, 0))


def _border_points(countries, n, rng):
    """Points on and right next to country boundaries (coasts and land borders)."""
    bnd = shapely.get_coordinates(countries.geometry.boundary.values)
    pick = bnd[rng.integers(0, len(bnd), n)]
    jitter = rng.normal(0, 1e-4, (n, 2)) * (rng.random((n, 1)) < 0.7)
    return pick + jitter


def test_lookup_equals_exact(countries, lookup):
    rng = np.random.default_rng(42)
    pts = np.vstack(
        [
            np.column_stack([rng.uniform(-180, 180, 20000), rng.uniform(-90, 90, 20000)]),
            _border_points(countries, 20000, rng),
            [[-180, -90], [180, 90], [0, 0], [10.0, 51.0], [7.0, 47.5]],
        ]
    )
    pts = np.vstack([pts, pts[:100]])  # repeated coordinates
    got = lookup.lookup(pts[:, 0], pts[:, 1])
    assert got.dtype == np.int32
    want = exact_lookup(countries.geometry.values, pts[:, 0], pts[:, 1])
    np.testing.assert_array_equal(got, want)
    # and the plain geopandas sjoin 'within' on a subset (lowest index per point)
    sub = pts[:3000]
    p = gpd.GeoDataFrame(geometry=gpd.points_from_xy(sub[:, 0], sub[:, 1]), crs="EPSG:4326")
    j = gpd.sjoin(p, countries, predicate="within", how="left")
    sj = j.groupby(level=0)["index_right"].min().reindex(range(len(sub))).fillna(-1).astype(int)
    np.testing.assert_array_equal(got[:3000], sj.to_numpy())
    de = countries.index[countries.country == "Germany"][0]
    assert got[-100 - 2] == de


def test_lookup_out_of_range_and_nan(lookup):
    r = lookup.lookup(np.array([np.nan, 200.0, 0.0]), np.array([0.0, 0.0, 95.0]))
    assert r.tolist() == [-1, -1, -1]


def test_overlapping_polygons_lowest_index():
    geoms = np.array(
        [shapely.box(0, 0, 10, 10), shapely.box(5, 5, 15, 15), shapely.box(20, 20, 21, 21)]
    )
    lk = CountryLookup.from_countries(geoms, cell=1.0)
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-1, 22, 5000), [5.0, 10.0, 7.0, 20.0]])
    y = np.concatenate([rng.uniform(-1, 22, 5000), [5.0, 10.0, 7.0, 20.5]])
    np.testing.assert_array_equal(lk.lookup(x, y), exact_lookup(geoms, x, y))
    assert lk.lookup(np.array([7.0]), np.array([7.0])).tolist() == [0]


def test_pickle_and_disk_cache(countries, lookup, tmp_path):
    rng = np.random.default_rng(7)
    x, y = rng.uniform(-20, 40, 5000), rng.uniform(30, 70, 5000)
    ref = lookup.lookup(x, y)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(lookup)).lookup(x, y), ref)
    path = lookup.save(tmp_path / "lk.npz")
    loaded = CountryLookup.load(path, countries)
    np.testing.assert_array_equal(loaded.lookup(x, y), ref)
    assert loaded.names == list(countries.country)
    other = countries.iloc[:5]
    with pytest.raises(ValueError, match="other country polygons"):
        CountryLookup.load(path, other)
