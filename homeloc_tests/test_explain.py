"""``homeloc explain``: same numbers as ``homeloc run``'s exports, exit 2 for unknown users, seeks."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from homeloc_assets.cli import main
from homeloc_assets.explain import explain_user, load_countries
from homeloc_assets.settings import Settings
from homeloc_tests.helpers import HOMELOC

N_USERS = 10_000


@pytest.fixture(scope="module")
def run_out(tmp_path_factory):
    """A synthetic file and the exports of ``homeloc run`` on it (a separate process)."""
    from homeloc_assets.synth import generate

    root = tmp_path_factory.mktemp("explain")
    csv = root / "userdays.csv"
    generate(N_USERS, csv, seed=11)
    out = root / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOMELOC_", "DAGSTER_"))}
    env.update(HOMELOC_WORKERS="1", DAGSTER_HOME=str(root / "dagster_home"))
    proc = subprocess.run(
        [*HOMELOC, "run", "--input", str(csv), "--out", str(out),
         "--quiet"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return csv, out


@pytest.fixture(scope="module")
def countries():
    return load_countries(Settings())


def _users_with_countries(out: Path, n: int) -> list[str]:
    """Up to ``n`` users with several countries, and one with a single country."""
    cu = pq.read_table(out / "user_country_userdays.parquet", columns=["user_guid"])
    counts = cu.group_by("user_guid").aggregate([([], "count_all")]).sort_by("user_guid")
    many = counts.filter(pc.greater(counts["count_all"], 2))["user_guid"].to_pylist()
    one = counts.filter(pc.equal(counts["count_all"], 1))["user_guid"].to_pylist()
    assert many and one
    return many[:n] + one[:1]


@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_explain_matches_run_exports(run_out, countries):
    csv, out = run_out
    cu = pq.read_table(out / "user_country_userdays.parquet")
    homes = pq.read_table(out / "user_home_locations.parquet")
    cls = pacsv.read_csv(out / "user_classification.csv")
    for guid in _users_with_countries(out, 8):
        ex = explain_user(csv, guid, countries, "Germany")
        assert ex.found
        want = {
            r["country_code"]: (r["country"], r["userdays"], r["locations"])
            for r in cu.filter(pc.equal(cu["user_guid"], guid)).to_pylist()
        }
        got = {
            r["country_code"]: (r["country"], r["userdays"], r["locations"])
            for r in ex.per_country.to_pylist()
        }
        assert got == want, guid
        home = homes.filter(pc.equal(homes["user_guid"], guid)).to_pylist()[0]
        for col in ("country", "country_code", "userdays", "total_userdays", "runner_up",
                    "runner_up_userdays", "margin", "tie", "status", "reason"):
            assert ex.home[col] == home[col], (guid, col)
        assert ex.total_userdays == home["total_userdays"]
        want_cls = cls.filter(pc.equal(cls["user_guid"], guid))["classification"][0].as_py()
        assert ex.classification == want_cls
        assert home["country"] in ex.reason() and want_cls in ex.reason()


@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_cli_prints_table_and_draws_map(run_out, tmp_path, capsys):
    csv, out = run_out
    guid = _users_with_countries(out, 1)[0]
    home = pq.read_table(out / "user_home_locations.parquet")
    home = home.filter(pc.equal(home["user_guid"], guid)).to_pylist()[0]
    png = tmp_path / "map.png"
    rc = main(["explain", guid, "--input", str(csv), "--out", str(png)])
    text = capsys.readouterr().out
    assert rc == 0
    assert guid in text and "distinct userdays" in text
    assert f"decision: home {home['country']} ({home['country_code']})" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("guid", ["not-a-user", "0" * 32, "f" * 32, "7"])
@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_unknown_user_exits_2(run_out, guid, capsys):
    csv, _ = run_out
    rc = main(["explain", guid, "--input", str(csv)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "is not in" in err


def test_missing_input_exits_2(tmp_path, capsys):
    assert main(["explain", "x", "--input", str(tmp_path / "none.csv")]) == 2
    assert "not found" in capsys.readouterr().err


def _bytes_read() -> int:
    with open("/proc/self/io") as fh:
        for line in fh:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise RuntimeError("no rchar")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_explain_seeks_instead_of_reading_the_file(run_out, countries):
    csv, out = run_out
    guids = _users_with_countries(out, 3)
    explain_user(csv, guids[0], countries)  # warm up: imports, lazy loads
    size = csv.stat().st_size
    for guid in guids[1:]:
        before = _bytes_read()
        ex = explain_user(csv, guid, countries)
        used = _bytes_read() - before
        assert ex.found
        # a few probes of 8 KiB and two 64 KiB windows, not the 4 MB file
        assert used < size / 4, (guid, used, size)


# ------------------------------------------------------------------ layers
@pytest.fixture(scope="module")
def layered_run(tmp_path_factory):
    """``homeloc run`` with an H3 layer and a polygon layer (Germany cut in two) as study region."""
    import geopandas as gpd
    from shapely.geometry import box

    from homeloc_assets.synth import generate

    root = tmp_path_factory.mktemp("explain_layers")
    csv = root / "userdays.csv"
    generate(1_500, csv, seed=12)
    halves = root / "halves.gpkg"
    gpd.GeoDataFrame({"name": ["West", "East"], "code": ["W", "E"]},
                     geometry=[box(5.0, 47.0, 10.5, 55.5), box(10.5, 47.0, 15.5, 55.5)],
                     crs="EPSG:4326").to_file(halves)
    out = root / "out"
    layers = ["cells=h3:4", f"halves={halves}#name,code"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOMELOC_", "DAGSTER_"))}
    env.update(HOMELOC_WORKERS="1", DAGSTER_HOME=str(root / "dagster_home"))
    cmd = [*HOMELOC, "run", "--input", str(csv), "--out",
           str(out), "--quiet", "--no-figures", "--no-landscape", "--study-region", "halves=W"]
    for layer in layers:
        cmd += ["--layer", layer]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return csv, out, layers


@pytest.mark.heavy  # CI time
def test_explain_reports_every_layer_as_the_run_does(layered_run, countries):
    from homeloc_assets.geo.layers import parse_layers
    from homeloc_assets.inference.rules import HomeRule

    csv, out, layers = layered_run
    specs = parse_layers(layers)
    cls = pacsv.read_csv(out / "user_classification.csv")
    region_ud = {s.name: pq.read_table(out / f"user_region_userdays_{s.name}.parquet")
                 for s in specs}
    region_home = {s.name: pq.read_table(out / f"user_home_{s.name}.parquet") for s in specs}
    guids = _users_with_countries(out, 6)
    halves_homes = region_home["halves"]
    guids += halves_homes.filter(pc.equal(halves_homes["region_code"], "E"))["user_guid"][:2] \
        .to_pylist()  # Domestic tourists (home in the study country, not in the study region)
    seen_classes = set()
    for guid in guids:
        ex = explain_user(csv, guid, countries, "Germany", rule=HomeRule(), layers=specs,
                          study_region=("halves", "W"))
        assert [lx.name for lx in ex.layers] == ["cells", "halves"]
        for lx in ex.layers:
            want = region_ud[lx.name].filter(pc.equal(region_ud[lx.name]["user_guid"], guid))
            assert {(r["region_code"], r["userdays"], r["locations"]) for r in want.to_pylist()} \
                == {(r["region_code"], r["userdays"], r["locations"])
                    for r in lx.per_region.to_pylist()}, (guid, lx.name)
            home = region_home[lx.name].filter(pc.equal(region_home[lx.name]["user_guid"], guid))
            if home.num_rows == 0:
                assert lx.home is None and lx.status is None
                continue
            home = home.to_pylist()[0]
            for col in ("region", "region_code", "userdays", "total_userdays", "margin", "tie",
                        "status", "reason"):
                assert lx.home[col] == home[col], (guid, lx.name, col)
            assert lx.status in lx.reason() and str(home["region_code"]) in lx.reason()
        row = cls.filter(pc.equal(cls["user_guid"], guid))
        if row.num_rows:
            assert ex.classification == row["classification"][0].as_py(), guid
            seen_classes.add(ex.classification)
    assert "Domestic tourist" in seen_classes and "International tourist" in seen_classes


@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_cli_prints_each_layer(layered_run, capsys):
    csv, out, layers = layered_run
    guid = _users_with_countries(out, 1)[0]
    home = pq.read_table(out / "user_home_cells.parquet")
    home = home.filter(pc.equal(home["user_guid"], guid)).to_pylist()[0]
    argv = ["explain", guid, "--input", str(csv)]
    for layer in layers:
        argv += ["--layer", layer]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "layer cells (h3:4): distinct userdays per region" in text
    assert f"layer cells: home region {home['region_code']}:" in text
    assert f"; {home['status']}" in text
    assert "layer halves" in text


# --------------------------------------------------------------------- map
def test_map_is_framed_on_the_points_and_shades_the_countries(countries):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from homeloc_assets import plots

    # Berlin, Munich, Hamburg and one point in Vienna: a regional view, not the world
    lon = np.array([13.40, 11.58, 9.99, 16.37])
    lat = np.array([52.52, 48.14, 53.55, 48.21])
    fig = plots.user_map(countries, lon, lat, "DEU", "t", userdays=np.array([5, 3, 2, 1.0]),
                         country_userdays={"DEU": 9.0, "AUT": 1.0})
    FigureCanvasAgg(fig).draw()
    ax = fig.axes[0]
    crs, _, _ = plots.user_frame(lon, lat, 1.0)
    pts = gpd_points(lon, lat, crs)
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert (pts[:, 0] > x0).all() and (pts[:, 0] < x1).all()  # every point in view ...
    assert (pts[:, 1] > y0).all() and (pts[:, 1] < y1).all()
    span_x = np.ptp(pts[:, 0]) / (x1 - x0)
    span_y = np.ptp(pts[:, 1]) / (y1 - y0)
    assert max(span_x, span_y) > 0.6  # ... and they fill the frame: little white space
    box = ax.get_position()
    assert box.y0 >= 0 and box.y1 <= 1 and box.height > 0.6  # the map is not cut off
    # the legend sits outside the map (it hid points at the lower left before)
    legend = fig.legends[0].get_window_extent()
    assert legend.y1 <= ax.get_window_extent().y0 + 1
    # countries shaded by distinct userdays: the home darker than Austria, both on the map
    colours = fig.homeloc_country_colours
    assert set(colours) == {"DEU", "AUT"}
    assert sum(colours["DEU"][:3]) < sum(colours["AUT"][:3])
    shaded = [c for c in ax.collections if c.get_gid() == "user-countries"]
    assert len(shaded) == 1


def test_map_of_a_user_on_two_continents_shows_both(countries):
    from homeloc_assets import plots

    lon, lat = np.array([13.4, 139.7]), np.array([52.5, 35.7])  # Berlin and Tokyo
    fig = plots.user_map(countries, lon, lat, "DEU", "t", country_userdays={"DEU": 3, "JPN": 2})
    ax = fig.axes[0]
    crs, _, _ = plots.user_frame(lon, lat, 1.0)
    pts = gpd_points(lon, lat, crs)
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert ((pts[:, 0] > x0) & (pts[:, 0] < x1) & (pts[:, 1] > y0) & (pts[:, 1] < y1)).all()


def gpd_points(lon, lat, crs) -> np.ndarray:
    import geopandas as gpd

    g = gpd.GeoSeries(gpd.points_from_xy(lon, lat), crs="EPSG:4326").to_crs(crs)
    return np.column_stack([g.x.to_numpy(), g.y.to_numpy()])


@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_cli_min_share_makes_the_user_undetermined_with_the_rules_reason(run_out, capsys):
    csv, out = run_out
    homes = pq.read_table(out / "user_home_locations.parquet")
    row = homes.filter(pc.less(homes["home_share"], 0.9)).to_pylist()[0]
    above = f"{min(row['home_share'] + 0.05, 1.0):.3f}"
    assert main(["explain", row["user_guid"], "--input", str(csv), "--min-share", above]) == 0
    text = capsys.readouterr().out
    assert "status: undetermined (home_share_below_min)" in text
    assert "undetermined: the home's share of the distinct userdays below --min-share" in text
