"""Landscape cells: HLL unions equal PostgreSQL's, the test follows scipy, batches do not matter."""

from __future__ import annotations

import dagster as dg
import h3
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import binomtest, false_discovery_control

from homeloc_assets.catalog import Catalog
from homeloc_assets.definitions import build_definitions
from homeloc_assets.inference.landscape import (
    LandscapeParams,
    binom_two_sided,
    combine,
    landscape_table,
)
from homeloc_assets.settings import Settings

BATCH_ASSETS = ["user_locations", "user_country_userdays", "user_home_locations", "rejected_rows"]
LANDSCAPE = ["landscape_batch_cells", "landscape_cells", "landscape_category_map",
             "landscape_share_map"]
CLS = {"Local": "local", "Tourist": "tourist", "undetermined": "undetermined"}


def _run(root, csv, batch_users: int, resolution: int = 7, min_userdays: float = 0.0):
    settings = Settings(input_dir=str(csv.parent), output_dir=str(root / "out"), workers=1,
                        batch_users=batch_users, cell_resolution=resolution,
                        min_userdays=min_userdays)
    defs = build_definitions(settings)
    instance = dg.DagsterInstance.ephemeral()
    _, keys = Catalog(settings.storage_path).register(csv, settings.batch_users)
    instance.add_dynamic_partitions("user_batches", keys)
    tags = {"dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[-1]}
    for selection, t in ((["world_countries", "countries"], None), (BATCH_ASSETS, tags),
                         (["user_classification"], None), (LANDSCAPE[:1], tags),
                         (LANDSCAPE[1:], None)):
        res = dg.materialize(defs.assets, selection=selection, instance=instance,
                             resources=defs.resources, tags=t)
        assert res.success
    return settings, keys, res


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from homeloc_assets.synth import generate

    root = tmp_path_factory.mktemp("landscape")
    csv = root / "in" / "userdays.csv"
    csv.parent.mkdir()
    generate(2_500, csv, seed=5)
    return root, csv


@pytest.fixture(scope="module")
def run(data):
    root, csv = data
    return _run(root / "a", csv, batch_users=900, min_userdays=3)


def _rows(settings) -> pd.DataFrame:
    """Every study-country location row with its user's class and H3 cell (h3 per row)."""
    tdir = settings.tables_path
    locs = pd.concat(pd.read_parquet(p) for p in sorted((tdir / "user_locations").glob("*.parquet")))
    cls = pd.read_parquet(tdir / "user_classification.parquet")[["user_guid", "classification"]]
    locs = locs[locs.country_code == "DEU"].merge(cls, on="user_guid")
    locs["cell"] = [h3.latlng_to_cell(a, b, settings.cell_resolution)
                    for a, b in zip(locs.latitude, locs.longitude, strict=True)]
    locs["h"] = ["\\x" + bytes(v).hex() for v in locs.userday_hll]
    return locs


@pytest.mark.slow
def test_cells_and_hlls_equal_postgresql(run, pg_conn):
    settings, keys, _ = run
    assert len(keys) >= 3
    rows = _rows(settings)
    out = pd.read_parquet(settings.storage_path.parent / "landscape_cells.parquet")
    assert set(out.cell) == set(rows.cell) and out.cell.is_unique
    assert (out.resolution == 7).all()
    with pg_conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE loc (u text, cell text, cls text, h hll)")
        cur.executemany("INSERT INTO loc VALUES (%s, %s, %s, %s::hll)",
                        list(zip(rows.user_guid, rows.cell, rows.classification, rows.h,
                                 strict=True)))
        cur.execute("SELECT cell, cls, hll_cardinality(hll_union_agg(h)), "
                    "hll_union_agg(h)::text, count(DISTINCT u) FROM loc GROUP BY 1, 2")
        pg = pd.DataFrame(cur.fetchall(), columns=["cell", "cls", "card", "text", "users"])
        # pooled over the 1-ring, for a sample of cells
        sample = out.sort_values("observations", ascending=False).cell.head(25).tolist()
        pooled = []
        for c in sample:
            ring = list(h3.grid_disk(c, 1))
            cur.execute("SELECT cls, hll_cardinality(hll_union_agg(h)), count(DISTINCT u) "
                        "FROM loc WHERE cell = ANY(%s) GROUP BY 1", (ring,))
            pooled += [(c, *r) for r in cur.fetchall()]
        cur.execute("DROP TABLE loc")
    by = out.set_index("cell")
    for r in pg.itertuples():
        name = CLS[r.cls]
        assert by.at[r.cell, f"{name}_userdays"] == r.card
        assert by.at[r.cell, f"{name}_hll"] == r.text  # byte-identical union
        assert by.at[r.cell, f"{name}_users"] == r.users
    # a class without rows in a cell: 0 userdays, 0 users, null HLL
    have = set(zip(pg.cell, pg.cls, strict=True))
    for cell in out.cell[:200]:
        for cls, name in CLS.items():
            if (cell, cls) not in have:
                assert by.at[cell, f"{name}_userdays"] == 0 and by.at[cell, f"{name}_users"] == 0
                assert pd.isna(by.at[cell, f"{name}_hll"])
    for cell, cls, card, users in pooled:
        if cls != "undetermined":
            assert by.at[cell, f"pooled_{CLS[cls]}_userdays"] == card
            assert by.at[cell, f"pooled_{CLS[cls]}_users"] == users


@pytest.mark.slow
def test_categories_follow_the_stated_test(run):
    settings, _, _ = run
    out = pd.read_parquet(settings.storage_path.parent / "landscape_cells.parquet")
    p0 = out.local_userdays.sum(), out.tourist_userdays.sum()
    overall = p0[1] / (p0[0] + p0[1])
    assert np.allclose(out.overall_share, overall)
    k = np.rint(out.pooled_tourist_userdays).astype(int)
    n = k + np.rint(out.pooled_local_userdays).astype(int)
    assert (out.observations == n).all() and (out.tourist_observations == k).all()
    tested = n >= 30
    assert tested.sum() > 5
    assert (out.category[~tested] == "too little data").all()
    assert out.p_value[~tested].isna().all()
    t = out[tested]
    for r in t.head(8).itertuples():
        assert r.p_value == pytest.approx(binomtest(r.tourist_observations, r.observations,
                                                    overall).pvalue, rel=1e-12, abs=1e-300)
    q = false_discovery_control(t.p_value.to_numpy(), method="by")
    np.testing.assert_allclose(t.q_value, q, rtol=1e-12)
    share = out.pooled_tourist_userdays / (out.pooled_tourist_userdays + out.pooled_local_userdays)
    np.testing.assert_allclose(out.tourist_share, share)
    sig = tested & (out.q_value <= 0.05)
    want = np.where(~tested, "too little data", np.where(
        sig & (share - overall >= 0.10), "touristic",
        np.where(sig & (overall - share >= 0.10), "local", "not different")))
    assert (out.category.to_numpy() == want).all()


def test_binomial_test_equals_scipy():
    rng = np.random.default_rng(1)
    n = rng.integers(1, 3000, 400)
    k = rng.binomial(n, rng.uniform(0.01, 0.99, 400))
    for p in (0.03, 0.3, 0.5, 0.91):
        got = binom_two_sided(k, n, p)
        want = [binomtest(int(a), int(b), p).pvalue for a, b in zip(k, n, strict=True)]
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    # k == n p and the extremes
    np.testing.assert_allclose(binom_two_sided(np.array([5, 0, 10]), np.array([10, 10, 10]), 0.5),
                               [binomtest(5, 10, .5).pvalue, binomtest(0, 10, .5).pvalue,
                                binomtest(10, 10, .5).pvalue], rtol=1e-12)


@pytest.mark.slow
def test_partition_union_and_batch_size_independence(run, data):
    settings, keys, _ = run
    parts = [pq.read_table(p) for p in
             sorted((settings.tables_path / "landscape_batch_cells").glob("*.parquet"))]
    assert len(parts) == len(keys)
    params = LandscapeParams(resolution=7)
    by_parts, _ = landscape_table(combine(parts), params)
    whole, _ = landscape_table(combine([pa.concat_tables(parts)]), params)
    pd.testing.assert_frame_equal(by_parts.to_pandas(), whole.to_pandas())
    root, csv = data
    other, _, _ = _run(root / "b", csv, batch_users=5_000, min_userdays=3)
    a = pd.read_parquet(settings.storage_path.parent / "landscape_cells.parquet")
    b = pd.read_parquet(other.storage_path.parent / "landscape_cells.parquet")
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.slow
def test_exports_and_figures(run):
    settings, _, res = run
    out = settings.storage_path.parent
    import geopandas as gpd

    g = gpd.read_file(out / "landscape_cells.gpkg")
    t = pd.read_parquet(out / "landscape_cells.parquet")
    assert g.crs.to_epsg() == 4326 and len(g) == len(t)
    assert (g.geom_type == "Polygon").all()
    # each hexagon contains its cell's centre
    centres = gpd.points_from_xy([h3.cell_to_latlng(c)[1] for c in g.cell[:50]],
                                 [h3.cell_to_latlng(c)[0] for c in g.cell[:50]])
    assert g.geometry[:50].contains(gpd.GeoSeries(centres), align=False).all()
    for name in ("landscape_category_map", "landscape_share_map"):
        assert (out / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # written again: the same bytes (the GeoPackage's timestamp is fixed)
    from homeloc_assets.defs.landscape import write_landscape

    again = write_landscape(out / "again", pq.read_table(out / "landscape_cells.parquet"))
    for name, path in again.items():
        assert path.read_bytes() == (out / name).read_bytes()
    md = {e.asset_key.to_user_string(): e.materialization.metadata
          for e in res.get_asset_materialization_events()}
    assert "(data:image/png;base64," in md["landscape_category_map"]["preview"].value
    assert md["landscape_cells"]["cells"].value == len(t)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="cell resolution"):
        Settings(cell_resolution=16).validated()
    with pytest.raises(ValueError, match="ring"):
        Settings.from_env({"HOMELOC_CELL_RING": "-1"})
    assert Settings.from_env({"HOMELOC_CELL_RESOLUTION": "9"}).landscape_params.resolution == 9


def test_a_batch_without_points_in_the_study_country_gives_no_cells():
    from homeloc_assets.inference.landscape import batch_cells

    locs = pa.table({"user_guid": ["a"], "latitude": [48.0], "longitude": [11.0],
                     "country_code": ["FRA"],
                     "userday_hll": pa.array([b"\x11\x8b\x7f"], pa.binary())})
    cls = pa.table({"user_guid": ["a"], "classification": ["Tourist"]})
    b = batch_cells(locs, cls, "DEU", 8, 1)
    assert b.num_rows == 0
    t, info = landscape_table(combine([b]), LandscapeParams())
    assert t.num_rows == 0 and info["cells"] == 0
