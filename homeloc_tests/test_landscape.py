"""Landscape cells: HLL unions equal PostgreSQL's, the test follows scipy, batches do not matter."""

from __future__ import annotations

import dagster as dg
import h3
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import binom, binomtest, false_discovery_control

from homeloc_assets.batch_runner import batch_assets
from homeloc_assets.definitions import build_definitions
from homeloc_assets.defs.jobs import range_tags
from homeloc_assets.defs.landscape import landscape_batch_keys, make_landscape_assets
from homeloc_assets.inference.landscape import (
    BATCH_SCHEMA,
    LandscapeParams,
    _binom_functions,
    batch_cells,
    binom_two_sided,
    by_q_values,
    combine,
    landscape_table,
)
from homeloc_assets.settings import Settings
from homeloc_tests.helpers import days, materialize, materialized, registered

CLS = {"Local": "local", "Tourist": "tourist", "undetermined": "undetermined"}


def assert_class_unions_equal(by: pd.DataFrame, keys, oracle: pd.DataFrame, checked) -> None:
    """Per (key, class) the table ``by`` (indexed by cell or region) equals PostgreSQL's
    ``oracle`` rows (``cls, card, text, users``, keyed by ``keys``): estimate, union bytes and
    distinct users; a class without rows at a key of ``checked``: 0, 0 and a null HLL."""
    for key, r in zip(keys, oracle.itertuples(), strict=True):
        name = CLS[r.cls]
        assert by.at[key, f"{name}_userdays"] == r.card
        assert by.at[key, f"{name}_hll"] == r.text  # byte-identical union
        assert by.at[key, f"{name}_users"] == r.users
    have = set(zip(keys, oracle.cls, strict=True))
    for key in checked:
        for cls, name in CLS.items():
            if (key, cls) not in have:
                assert by.at[key, f"{name}_userdays"] == 0
                assert by.at[key, f"{name}_users"] == 0
                assert pd.isna(by.at[key, f"{name}_hll"])

def _run(root, csv, batch_users: int, resolution: int = 7, min_userdays: float = 0.0,
         layers: str = "", instance=None):
    settings = Settings(input_dir=str(csv.parent), output_dir=str(root / "out"), workers=1,
                        batch_users=batch_users, cell_resolution=resolution,
                        min_userdays=min_userdays, layers=layers)
    defs, instance, keys = registered(settings, csv, instance=instance)
    tags = range_tags(keys)
    batch = landscape_batch_keys(settings.layer_specs)
    rest = [k.to_user_string() for a in make_landscape_assets(settings.layer_specs)
            for k in a.keys if k.to_user_string() not in batch]
    publish = {"ops": {"homeloc_published": {"config": {"figures": False}}}}
    for selection, t in ((["world_countries", "countries"], None),
                         (batch_assets(tuple(s.name for s in settings.layer_specs)), tags),
                         (["user_classification"], None), (batch, tags),
                         ([*rest, "homeloc_exports", "homeloc_published"], None)):
        res = materialize(defs, instance, selection, tags=t,
                          run_config=publish if "homeloc_published" in selection else None)
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
    assert_class_unions_equal(by, pg.cell, pg, out.cell[:200])
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
        np.testing.assert_array_equal(got, want)  # the same functions, the same bits
    # k == n p and the extremes
    np.testing.assert_allclose(binom_two_sided(np.array([5, 0, 10]), np.array([10, 10, 10]), 0.5),
                               [binomtest(5, 10, .5).pvalue, binomtest(0, 10, .5).pvalue,
                                binomtest(10, 10, .5).pvalue], rtol=1e-12)


def _clustered_rows(n_users: int, seed: int) -> pd.DataFrame:
    """Users with 1-6 locations among neighbouring H3 cells (resolution 9) of one town, so
    that many users have several cells in one k-ring: the case the overlap counts are for."""
    rng = np.random.default_rng(seed)
    base = h3.latlng_to_cell(52.52, 13.40, 9)
    area = sorted(h3.grid_disk(base, 4))
    rows = []
    for u in range(n_users):
        home = area[rng.integers(len(area))]
        near = sorted(h3.grid_disk(home, 1))
        for c in rng.choice(near, size=rng.integers(1, 7), replace=False):
            lat, lon = h3.cell_to_latlng(c)
            rows.append((f"u{u:04d}", lat, lon, "DEU",
                         days(*(int(d) for d in rng.choice(400, size=rng.integers(1, 6),
                                                           replace=False)))))
    rows.append(("x", 48.85, 2.35, "FRA", days(1)))  # outside the study country: no part
    return pd.DataFrame(rows, columns=["user_guid", "latitude", "longitude", "country_code",
                                       "userday_hll"])


@pytest.mark.parametrize("ring", [0, 1, 2])
def test_pooled_users_of_every_cell_equal_a_direct_count(ring):
    """Per cell and class, ``pooled_<class>_users`` (the ring's users less their repeats,
    summed over batches) equals the distinct users counted directly over the k-ring (h3),
    for every cell, whatever the batches; the batch tables hold no row for a neighbour
    without rows unless a user's cells overlap there."""
    rows = _clustered_rows(300, seed=ring)
    users = rows.user_guid.unique()
    rng = np.random.default_rng(9)
    cls_of = dict(zip(users, rng.choice(["Local", "Tourist", "undetermined"], len(users)),
                      strict=True))
    classes = pa.table({"user_guid": list(cls_of), "classification": list(cls_of.values())})
    loc = pa.Table.from_pandas(rows, preserve_index=False)

    def table(batches):
        parts = []
        for members in batches:
            sub = loc.filter(pa.array(rows.user_guid.isin(members).to_numpy()))
            t = batch_cells(sub, classes, "DEU", 9, ring)
            assert t.schema.equals(BATCH_SCHEMA)
            own = set(zip(sub.column("latitude").to_pylist(), sub.column("longitude").to_pylist(),
                          strict=True))
            own_cells = {h3.latlng_to_cell(a, b, 9) for a, b in own}
            extra = t.filter(pa.compute.is_null(t.column("hll")))
            assert all(v > 0 for v in extra.column("ring_overlap").to_pylist())
            assert len(set(t.column("cell").to_pylist())) <= len(own_cells) + len(extra)
            parts.append(t)
        out, _ = landscape_table(combine(parts), LandscapeParams(resolution=9, ring=ring))
        return out.to_pandas().set_index("cell")

    inside = rows[rows.country_code == "DEU"].copy()
    inside["cell"] = [h3.latlng_to_cell(a, b, 9)
                      for a, b in zip(inside.latitude, inside.longitude, strict=True)]
    inside["cls"] = inside.user_guid.map(cls_of)
    one = table([users])
    assert set(one.index) == set(inside.cell)
    for cell in one.index:
        near = inside[inside.cell.isin(h3.grid_disk(cell, ring))]
        for cls in ("Local", "Tourist"):
            want = near[near.cls == cls].user_guid.nunique()
            assert one.at[cell, f"pooled_{CLS[cls]}_users"] == want, (cell, cls)
        assert one.at[cell, "ring_cells"] == len(set(near.cell))
    shuffled = rng.permutation(users)
    for n_batches in (2, 7):
        other = table(np.array_split(shuffled, n_batches))
        pd.testing.assert_frame_equal(other, one)


def test_combine_gives_the_same_bytes_however_it_bounds_memory(monkeypatch):
    """combine unions the held batch tables once they pass _COMBINE_ROWS, and union_groups
    unions at most _UNION_BYTES of HLLs at once: neither changes a byte."""
    import homeloc_assets.inference.landscape as land

    rows = _clustered_rows(400, seed=3)
    users = rows.user_guid.unique()
    classes = pa.table({"user_guid": list(users),
                        "classification": [("Local", "Tourist", "undetermined")[i % 3]
                                           for i in range(len(users))]})
    loc = pa.Table.from_pandas(rows, preserve_index=False)
    parts = [batch_cells(loc.filter(pa.array(rows.user_guid.isin(m).to_numpy())), classes, "DEU",
                         9, 1) for m in np.array_split(users, 9)]
    once = land.combine(parts)
    calls = []
    real = land.grouped_union_arrow
    monkeypatch.setattr(land, "grouped_union_arrow",
                        lambda h, g, n: calls.append(n) or real(h, g, n))
    monkeypatch.setattr(land, "_COMBINE_ROWS", 1)  # a reduction after every table
    monkeypatch.setattr(land, "_UNION_BYTES", 200)  # unions of a few groups each
    often = land.combine(parts)
    assert len(calls) > 3 * 9 and max(calls) < 20
    assert often.equals(once)
    # the byte bound alone: reductions whenever the held HLLs pass it (or twice the last
    # union's bytes)
    monkeypatch.setattr(land, "_COMBINE_ROWS", 10**9)
    monkeypatch.setattr(land, "_UNION_BYTES", 1 << 20)
    monkeypatch.setattr(land, "_COMBINE_BYTES", 1)
    calls.clear()
    by_bytes = land.combine(parts)
    assert 2 <= len(calls) < 9  # the doubling spaces them out
    assert by_bytes.equals(once)


def test_rows_without_an_hll_are_no_trace():
    """A row with a null HLL counts for no cell: not in users, not in the ring overlaps
    (else a neighbour without an HLL would lower its ring's pooled users)."""
    a = h3.latlng_to_cell(52.52, 13.40, 9)
    b = next(c for c in h3.grid_disk(a, 1) if c != a)
    (la, oa), (lb, ob) = h3.cell_to_latlng(a), h3.cell_to_latlng(b)
    loc = pa.table({"user_guid": ["u1", "u1", "u2"], "latitude": [la, lb, lb],
                    "longitude": [oa, ob, ob], "country_code": ["DEU"] * 3,
                    "userday_hll": pa.array([days(1), None, None], pa.binary())})
    classes = pa.table({"user_guid": ["u1", "u2"], "classification": ["Tourist", "Tourist"]})
    t = batch_cells(loc, classes, "DEU", 9, 1)
    assert t.column("cell").to_pylist() == [int(a, 16)]
    assert t.column("users").to_pylist() == [1] and t.column("ring_overlap").to_pylist() == [0]
    out, _ = landscape_table(combine([t]), LandscapeParams(resolution=9, ring=1))
    assert out.column("pooled_tourist_users").to_pylist() == [1]


def test_union_slices_end_at_a_last_group_larger_than_a_slice(monkeypatch):
    """A last group of many rows with small first rows: the byte thresholds inside it
    start no slice (the union is the same as in one piece)."""
    import homeloc_assets.inference.landscape as land

    hlls = pa.array([days(1), days(2)] + [days(i, i + 1) for i in range(40)], pa.large_binary())
    groups = np.array([0, 0] + [1] * 40)
    whole = land.union_groups(hlls, groups, 2)
    monkeypatch.setattr(land, "_UNION_BYTES", 50)
    assert land.union_groups(hlls, groups, 2).equals(whole)


def test_batch_tables_of_an_older_format_or_other_settings_are_refused(tmp_path):
    """A batch table of the format before ``ring_overlap`` (metadata without a version) or of
    other settings is not combined: landscape_cells asks for it to be made again."""
    from homeloc_assets.defs.landscape import check_batch_params
    from homeloc_assets.inference.landscape import PARAMS_KEY, batch_params

    files = {}
    for key, meta in (("a", batch_params(8, 1, "DEU")), ("b", b"8,1,DEU")):
        files[key] = tmp_path / f"{key}.parquet"
        pq.write_table(BATCH_SCHEMA.empty_table().replace_schema_metadata({PARAMS_KEY: meta}),
                       files[key])
    check_batch_params({"a": files["a"]}, batch_params(8, 1, "DEU"))
    with pytest.raises(dg.Failure, match="landscape_batch_cells b .*materialize it again"):
        check_batch_params(files, batch_params(8, 1, "DEU"))
    with pytest.raises(dg.Failure, match="landscape_batch_cells a "):
        check_batch_params(files, batch_params(8, 2, "DEU"))


def test_binomial_functions_are_scipy_stats_bit_for_bit():
    """The scipy.special ufuncs behind scipy.stats.binom, with its support handling:
    equal to the last bit, inside, on and outside the support."""
    pmf, cdf, sf = _binom_functions()
    rng = np.random.default_rng(3)
    n = rng.integers(1, 5000, 3000)
    x = np.concatenate([rng.integers(-3, n + 3), [0, -1], [5, 6]])
    n = np.concatenate([n, [7, 7], [5, 5]])
    for p in (0.001, 0.27, 0.5, 0.93):
        np.testing.assert_array_equal(pmf(x, n, p), binom.pmf(x, n, p))
        np.testing.assert_array_equal(cdf(x, n, p), binom.cdf(x, n, p))
        np.testing.assert_array_equal(sf(x, n, p), binom.sf(x, n, p))


def test_by_q_values_are_scipy_bit_for_bit():
    rng = np.random.default_rng(4)
    for p in (rng.uniform(size=1000), np.repeat(rng.uniform(size=50), 7),
              np.array([0.0, 1.0, 0.5, 0.5, 1e-300]), np.array([0.2])):
        np.testing.assert_array_equal(by_q_values(p), false_discovery_control(p, method="by"))
    assert len(by_q_values(np.zeros(0))) == 0


def test_landscape_table_does_not_import_scipy_stats():
    """The test's functions come from scipy.special: scipy.stats costs ~1 s per process."""
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "from homeloc_assets.inference.landscape import binom_two_sided, by_q_values\n"
            "by_q_values(binom_two_sided(np.array([3, 40]), np.array([50, 60]), 0.4))\n"
            "assert 'scipy.stats' not in sys.modules, 'scipy.stats imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


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
def test_pooled_estimates_equal_the_ring_bytes_parsed_again(run):
    """The ring-pooled userdays of ``landscape_table`` (each class's cell unions parsed once,
    the rings taken from the parse) equal the reference: the ring cells' union bytes taken
    and parsed again per ring, every cell."""
    import pyarrow.compute as pc

    from homeloc_assets.hll import grouped_cardinality
    from homeloc_assets.inference.landscape import _rings

    settings, keys, _ = run
    tdir = settings.tables_path / "landscape_batch_cells"
    combined = combine(pq.read_table(tdir / f"{k}.parquet") for k in keys)
    table, _ = landscape_table(combined, LandscapeParams(7, 1))
    own = combined.filter(pc.is_valid(combined.column("hll")))
    cells = np.unique(own.column("cell").to_numpy())
    center, nbr = _rings(cells, 1)
    npos = np.searchsorted(cells, nbr)
    ok = (npos < len(cells)) & (cells[np.minimum(npos, len(cells) - 1)] == nbr)
    for c, name in ((0, "local"), (1, "tourist")):
        rows = own.filter(pc.equal(own.column("cls"), c))
        idx = np.full(len(cells), -1, np.int64)
        idx[np.searchsorted(cells, rows.column("cell").to_numpy())] = np.arange(rows.num_rows)
        blobs = rows.column("hll").combine_chunks().take(pa.array(idx, mask=idx < 0))
        ref = grouped_cardinality(blobs.take(pa.array(npos[ok])), center[ok], len(cells))
        assert np.array_equal(table.column(f"pooled_{name}_userdays").to_numpy(),
                              np.nan_to_num(ref, nan=0.0))


@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
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
    figure = md["landscape_category_map"]["figure"].value  # served inline, or a data URI
    assert figure.startswith("![") and ("/logs/" in figure or "(data:image/png;base64," in figure)
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


# ------------------------------------------------------------- per-layer landscape unions
EUROPE = ["Germany", "France", "Poland", "Austria", "Netherlands", "Czechia", "Denmark"]


@pytest.fixture(scope="module")
def regions_file(data):
    """A polygon layer over some countries (own column names, regions split into parts)."""
    import geopandas as gpd

    from homeloc_assets.geo import dissolve_countries, load_world_countries

    root, _ = data
    countries = dissolve_countries(load_world_countries())
    sub = countries[countries.country.isin(EUROPE)].reset_index(drop=True)
    parts = sub.explode(index_parts=False).reset_index(drop=True)
    gdf = gpd.GeoDataFrame({"NAME_X": "R-" + parts.country, "ID_X": "r" + parts.country_code},
                           geometry=parts.geometry, crs="EPSG:4326")
    path = root / "regions.gpkg"
    gdf.to_file(path, driver="GPKG")
    return path


def _layers(regions_file) -> str:
    return f"regions={regions_file}#NAME_X,ID_X;hex=h3:4"


@pytest.fixture(scope="module")
def layer_run(data, regions_file):
    root, csv = data
    return _run(root / "layers", csv, batch_users=900, min_userdays=3,
                layers=_layers(regions_file))


def _all_rows(settings) -> pd.DataFrame:
    tdir = settings.tables_path
    locs = pd.concat(pd.read_parquet(p) for p in sorted((tdir / "user_locations").glob("*.parquet")))
    cls = pd.read_parquet(tdir / "user_classification.parquet")[["user_guid", "classification"]]
    locs = locs.merge(cls, on="user_guid")
    locs["h"] = ["\\x" + bytes(v).hex() for v in locs.userday_hll]
    return locs.reset_index(drop=True)


@pytest.mark.slow
def test_layer_unions_equal_postgresql(layer_run, regions_file, pg_conn):
    """Per layer and (region, class): the union's bytes, estimate and distinct users are
    PostgreSQL's hll_union_agg / hll_cardinality / count(DISTINCT) over the same rows."""
    import geopandas as gpd

    settings, keys, res = layer_run
    assert len(keys) >= 3
    rows = _all_rows(settings)
    rows["hex"] = [h3.latlng_to_cell(a, b, 4)
                   for a, b in zip(rows.latitude, rows.longitude, strict=True)]
    regions = gpd.read_file(regions_file).dissolve(by="NAME_X", as_index=False)
    pts = gpd.GeoDataFrame(rows[["user_guid"]], crs="EPSG:4326",
                           geometry=gpd.points_from_xy(rows.longitude, rows.latitude))
    hit = gpd.sjoin(pts, regions[["NAME_X", "ID_X", "geometry"]], predicate="within")
    rows["regions"] = hit.ID_X.reindex(rows.index)
    assert rows.regions.notna().sum() > 1000 and rows.regions.isna().sum() > 0
    out_dir = settings.storage_path.parent
    with pg_conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE lr (u text, r text, hx text, cls text, h hll)")
        cur.executemany("INSERT INTO lr VALUES (%s, %s, %s, %s, %s::hll)",
                        list(zip(rows.user_guid, [None if pd.isna(x) else x for x in rows.regions],
                                 rows.hex, rows.classification, rows.h, strict=True)))
        pg = {}
        for layer, col in (("regions", "r"), ("hex", "hx")):
            cur.execute(f"SELECT {col}, cls, hll_cardinality(hll_union_agg(h)), "
                        f"hll_union_agg(h)::text, count(DISTINCT u), count(*) FROM lr "
                        f"WHERE {col} IS NOT NULL GROUP BY 1, 2")
            pg[layer] = pd.DataFrame(cur.fetchall(),
                                     columns=["code", "cls", "card", "text", "users", "rows"])
        cur.execute("DROP TABLE lr")
    md = {e.asset_key.to_user_string(): e.materialization.metadata
          for e in res.get_asset_materialization_events()}
    for layer in ("regions", "hex"):
        out = pd.read_parquet(out_dir / f"landscape_layer_{layer}.parquet")
        want = pg[layer]
        assert list(out.region_code) == sorted(set(want.code)) and out.region_code.is_unique
        assert md[f"landscape_layer_{layer}"]["regions"].value == len(out)
        by = out.set_index("region_code")
        assert_class_unions_equal(by, want.code, want, out.region_code)
        assert (by.locations == want.groupby("code")["rows"].sum().reindex(by.index)).all()
        lt = by.local_userdays + by.tourist_userdays
        np.testing.assert_allclose(by.tourist_share[lt > 0], (by.tourist_userdays / lt)[lt > 0])
        if layer == "regions":
            assert (by.region == "R-" + by.index.str[1:].map(
                dict(zip(regions.ID_X.str[1:], regions.NAME_X.str[2:], strict=True)))).all()


@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_layer_unions_do_not_depend_on_batch_size(layer_run, data, regions_file):
    settings, _, _ = layer_run
    root, csv = data
    other, _, _ = _run(root / "layers_b", csv, batch_users=5_000, min_userdays=3,
                       layers=_layers(regions_file))
    for name in ("landscape_layer_regions", "landscape_layer_hex", "landscape_cells"):
        a = pd.read_parquet(settings.storage_path.parent / f"{name}.parquet")
        b = pd.read_parquet(other.storage_path.parent / f"{name}.parquet")
        pd.testing.assert_frame_equal(a, b)


@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_worker_tables_equal_the_ones_computed_from_the_files(layer_run):
    """The batch workers' tables (from the rows in memory) and the ones landscape_batch_cells
    computes from the batch files when they are missing: the same bytes."""
    settings, keys, res = layer_run
    md = {e.asset_key.to_user_string(): e.materialization.metadata
          for e in res.get_asset_materialization_events()}
    tdir = settings.tables_path
    assets = landscape_batch_keys(settings.layer_specs)
    before = {(a, k): (tdir / a / f"{k}.parquet").read_bytes() for a in assets for k in keys}
    cache = settings.stats_path / "landscape"
    assert len(list(cache.glob("*.parquet"))) == len(assets) * len(keys)
    # the run above staged the workers' tables (it did not compute them)
    import shutil

    moved = cache.parent / "landscape.moved"
    shutil.move(cache, moved)
    try:
        defs, instance, _ = registered(settings, keys=keys)
        again = materialized(materialize(defs, instance, assets, tags=range_tags(keys)))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        shutil.move(moved, cache)
    assert again["landscape_batch_cells"]["tables_from_batch_workers"].value == 0
    del md
    for (a, k), raw in before.items():
        assert (tdir / a / f"{k}.parquet").read_bytes() == raw, (a, k)


@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_worker_tables_are_not_used_under_other_settings(run):
    """A classification made with another rule than the batch workers saw: the cached tables
    do not fit (their tag differs) and the cells are computed from the files."""
    from homeloc_assets.defs.landscape import BatchLandscapeSpec

    a = BatchLandscapeSpec("DEU", 7, 1, min_userdays=3.0)
    for other in (BatchLandscapeSpec("DEU", 7, 1, min_userdays=2.0), BatchLandscapeSpec("FRA", 7, 1, 3.0),
                  BatchLandscapeSpec("DEU", 8, 1, 3.0), BatchLandscapeSpec("DEU", 7, 2, 3.0),
                  BatchLandscapeSpec("DEU", 7, 1, 3.0, min_share=0.5),
                  BatchLandscapeSpec("DEU", 7, 1, 3.0, study_region="states=14")):
        assert a.tag() != other.tag()
    # the layers do not change the cells' tag; a layer's tag names its spec
    b = BatchLandscapeSpec("DEU", 7, 1, 3.0, layers=("hex=h3:4",))
    assert b.tag() == a.tag()
    assert b.tag("hex") != BatchLandscapeSpec("DEU", 7, 1, 3.0, layers=("hex=h3:5",)).tag("hex")


# ------------------------------------------------------------------------------ automation
@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_landscape_batches_follow_the_batches_and_the_classification_eagerly(data):
    """The landscape's per-batch assets are automated like the classification downstream of the
    batches (``AutomationCondition.eager()``, evaluated by ``homeloc_automation``): requested for
    every batch once the batches and the classification exist, again for every batch when the
    classification changes; landscape_cells follows once all batches' cells exist."""
    root, csv = data
    settings = Settings(input_dir=str(csv.parent), output_dir=str(root / "auto" / "out"),
                        workers=1, batch_users=900, cell_resolution=7)
    defs, instance, keys = registered(settings, csv)
    tags = range_tags(keys)
    batch_cells = dg.AssetKey("landscape_batch_cells")
    cells = dg.AssetKey("landscape_cells")
    classification = dg.AssetKey("user_classification")
    graph = defs.get_repository_def().asset_graph
    for key in (batch_cells, cells):
        assert graph.get(key).automation_condition is not None

    def mat(selection, t=None):
        materialize(defs, instance, selection, tags=t)

    def tick(cursor=None):
        res = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        return res, {k: res.get_requested_partitions(k) for k in (batch_cells, cells,
                                                                  classification)}

    mat(["world_countries", "countries"])
    res, _ = tick()  # the sensor's first tick: what exists is its starting point
    mat(batch_assets(), tags)
    res, req = tick(res.cursor)
    # the batches are there, the classification is not: it is requested, the landscape waits
    assert req[classification] == {None} and not req[batch_cells] and not req[cells]
    mat(["user_classification"])
    res, req = tick(res.cursor)
    assert req[batch_cells] == set(keys) and not req[cells]
    mat(["landscape_batch_cells"], tags)
    res, req = tick(res.cursor)
    assert not req[batch_cells] and req[cells] == {None}
    mat(["landscape_cells"])
    res, req = tick(res.cursor)
    assert not req[batch_cells] and not req[cells]
    # a new classification (e.g. other rules): every batch's cells again
    mat(["user_classification"])
    res, req = tick(res.cursor)
    assert req[batch_cells] == set(keys)


def test_results_job_leaves_the_landscape_to_its_automation(tmp_path):
    """With layers too, the (unpartitioned) results job holds no landscape asset."""
    settings = Settings(output_dir=str(tmp_path / "out"), layers="hex=h3:4")
    with dg.instance_for_test():
        repo = build_definitions(settings).get_repository_def()
    job = repo.get_job("homeloc_results_job")
    keys = {k.to_user_string() for k in job.asset_layer.executable_asset_keys}
    assert "user_classification" in keys and "homeloc_exports" in keys
    assert not {k for k in keys if k.startswith("landscape")}
    graph = repo.asset_graph
    for name in ("landscape_batch_cells", "landscape_batch_layer_hex", "landscape_cells",
                 "landscape_layer_hex", "landscape_category_map"):
        assert graph.get(dg.AssetKey(name)).automation_condition is not None, name


def test_a_batch_computed_again_without_the_landscape_drops_its_old_tables(run):
    """The workers' tables of a batch are only ever those of its latest computation: a batch
    made again with the workers' landscape off (``--no-landscape``) leaves none, and
    landscape_batch_cells computes that batch's cells from its files (the same bytes)."""
    settings, keys, _ = run
    cache = settings.stats_path / "landscape"
    tdir = settings.tables_path
    before = {k: (tdir / "landscape_batch_cells" / f"{k}.parquet").read_bytes() for k in keys}
    assert len(list(cache.glob(f"{keys[0]}.*.parquet"))) == 1
    off = settings.with_(landscape=False)
    defs, instance, _ = registered(off, keys=keys)
    materialize(defs, instance, batch_assets(), partition_key=keys[0])
    assert not list(cache.glob(f"{keys[0]}.*.parquet"))
    assert len(list(cache.glob(f"{keys[1]}.*.parquet"))) == 1  # other batches keep theirs
    defs = build_definitions(settings)
    r = dg.materialize(defs.assets, selection=["landscape_batch_cells"], instance=instance,
                       resources=defs.resources,
                       tags={"dagster/asset_partition_range_start": keys[0],
                             "dagster/asset_partition_range_end": keys[-1]})
    assert r.success
    md = {e.asset_key.to_user_string(): e.materialization.metadata
          for e in r.get_asset_materialization_events()}
    assert md["landscape_batch_cells"]["tables_from_batch_workers"].value == len(keys) - 1
    for k in keys:
        assert (tdir / "landscape_batch_cells" / f"{k}.parquet").read_bytes() == before[k], k


@pytest.mark.slow
def test_worker_tables_with_a_study_region_equal_the_computed_ones(data):
    """With a study region the classes are nested (Domestic and International tourists count as
    Tourists): the workers take the region homes from memory, the fallback from the files."""
    import shutil

    root, csv = data
    code = h3.latlng_to_cell(51.0, 10.0, 3)
    settings = Settings(input_dir=str(csv.parent), output_dir=str(root / "sr" / "out"), workers=1,
                        batch_users=900, cell_resolution=7, layers="hex=h3:3",
                        study_region=f"hex={code}")
    defs, instance, keys = registered(settings, csv)
    tags = range_tags(keys)
    batch = landscape_batch_keys(settings.layer_specs)

    def mat(selection, t=None):
        return materialized(materialize(defs, instance, selection, tags=t))

    mat(["world_countries", "countries"])
    mat(batch_assets(("hex",)), tags)
    mat(["user_classification"])
    cls = pd.read_parquet(settings.tables_path / "user_classification.parquet").classification
    assert {"Local", "Domestic tourist", "International tourist"} <= set(cls)
    md = mat(batch, tags)
    assert md["landscape_batch_cells"]["tables_from_batch_workers"].value == 2 * len(keys)
    tdir = settings.tables_path
    first = {(a, k): (tdir / a / f"{k}.parquet").read_bytes() for a in batch for k in keys}
    shutil.rmtree(settings.stats_path / "landscape")
    md = mat(batch, tags)
    assert md["landscape_batch_cells"]["tables_from_batch_workers"].value == 0
    for (a, k), raw in first.items():
        assert (tdir / a / f"{k}.parquet").read_bytes() == raw, (a, k)
