"""Report assets materialise on a small run: PNG + SVG files and the figure for the UI.

The browser test (``test_ui_browser.py``) checks that the UI really shows it.
"""

from __future__ import annotations

import base64
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from homeloc_assets import names, plots
from homeloc_assets.defs import reports
from homeloc_assets.defs.reports import REPORT_ASSETS, home_counts
from homeloc_assets.settings import Settings
from homeloc_tests.helpers import HOMELOC, materialize, registered

REPORTS = ["classification_report", "tourist_origins_map", "study_country_share_map"]
BATCH_ASSETS = list(names.BATCH_ASSETS)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A 2,000-user synthetic file run through countries, one batch and the classification."""
    from homeloc_assets.synth import generate

    root = tmp_path_factory.mktemp("reports")
    csv = root / "in" / "userdays.csv"
    csv.parent.mkdir()
    generate(2_000, csv, seed=21)
    settings = Settings(input_dir=str(csv.parent), output_dir=str(root / "out"), workers=1)
    defs, instance, keys = registered(settings, csv)
    for selection, key in ((list(names.COUNTRY_ASSETS), None), (BATCH_ASSETS, keys[0]),
                           ([names.USER_CLASSIFICATION], None)):
        materialize(defs, instance, selection, partition_key=key)
    return settings, defs, instance


def _png_width(png: bytes) -> int:
    assert png[12:16] == b"IHDR"
    return int.from_bytes(png[16:20], "big")


@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_reports_on_a_local_instance_serve_the_figure_to_the_ui(pipeline, tmp_path):
    """With the instance's local compute-log folder the figure is a short Markdown image.

    It points at the webserver's ``/logs/`` route for a PNG written in that
    folder; under 1,000 characters, so the UI shows it inline.
    """
    settings, defs, _ = pipeline
    (tmp_path / "home").mkdir()
    instance = dg.DagsterInstance.local_temp(str(tmp_path / "home"))
    res = dg.materialize(defs.assets, selection=["classification_report"], instance=instance,
                         resources=defs.resources)
    assert res.success
    (event,) = res.get_asset_materialization_events()
    md = event.materialization.metadata["figure"].value
    assert len(md) < reports.INLINE_MARKDOWN_LIMIT
    url = md.split("](", 1)[1].rstrip(")")
    assert url.startswith(f"/logs/{reports.UI_FIGURES}/classification_report-") and url.endswith("/png")
    namespace, stem, ext = url.removeprefix("/logs/").split("/")
    served = Path(instance.compute_log_manager.get_captured_local_path([namespace, stem], ext))
    png = served.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and _png_width(png) >= 800
    # materialised again: still one copy per content, at most UI_FIGURES_KEPT kept
    for _ in range(2):
        assert dg.materialize(defs.assets, selection=["classification_report"], instance=instance,
                              resources=defs.resources).success
    assert 1 <= len(list(served.parent.glob("classification_report-*.png"))) <= reports.UI_FIGURES_KEPT


def test_report_assets_are_wired():
    for a in REPORT_ASSETS:
        spec = next(iter(a.specs))
        assert dg.AssetKey("user_classification") in {d.asset_key for d in spec.deps}
        assert dg.AssetKey("countries") in {d.asset_key for d in spec.deps}
        assert spec.automation_condition is not None
        assert spec.group_name == "reports"
    assert sorted(a.key.to_user_string() for a in REPORT_ASSETS) == sorted(REPORTS)


@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_reports_materialise_with_figures_and_previews(pipeline):
    """Without a local compute-log folder (an ephemeral instance) the figure is a data-URI image."""
    settings, defs, instance = pipeline
    res = dg.materialize(defs.assets, selection=REPORTS, instance=instance,
                         resources=defs.resources)
    assert res.success
    cls = pq.read_table(settings.storage_path / "assets" / "user_classification.parquet")
    counts = {r["values"]: r["counts"] for r in pc.value_counts(cls["classification"]).to_pylist()}
    from homeloc_assets.provenance import read_run_info
    from homeloc_assets.publish import generation_dir

    # not published yet (no exports here): the figures are in the classification's generation
    generation = read_run_info(settings.storage_path / "assets" / "user_classification.parquet")
    figures = generation_dir(settings.output_dir, generation.generation) / "figures"
    seen = set()
    for event in res.get_asset_materialization_events():
        name = event.asset_key.to_user_string()
        seen.add(name)
        md = event.materialization.metadata
        preview = md["figure"].value
        assert preview.startswith("![") and "(data:image/png;base64," in preview
        b64 = preview.split("base64,", 1)[1].split(")", 1)[0]
        png = base64.b64decode(b64)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert _png_width(png) >= 800  # readable, not a thumbnail
        assert len(preview) < 400_000  # small enough for the event log
        png, svg = figures / f"{name}.png", figures / f"{name}.svg"
        assert md["png"].value == str(png.resolve()) and md["svg"].value == str(svg.resolve())
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"<svg" in svg.read_bytes()[:2000]
        assert not list(figures.glob(".*.tmp"))  # atomic writes leave no temporaries
        if name == "classification_report":
            assert md["local"].value == counts.get("Local", 0)
            assert md["tourist"].value == counts.get("Tourist", 0)
            assert md["undetermined"].value == counts.get("undetermined", 0)
        if name == "tourist_origins_map":
            assert md["tourists"].value == counts.get("Tourist", 0)
            table = md["table"].value
            assert "Top home countries" in table
            assert len(table) < reports.INLINE_MARKDOWN_LIMIT  # shown inline, no click
        if name == "study_country_share_map":
            assert md["users_with_home"].value == cls.num_rows
            local_share = counts.get("Local", 0) / cls.num_rows
            assert md["study_country_share"].value == pytest.approx(local_share, abs=1e-6)
    assert seen == set(REPORTS)


@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_home_counts_sums_to_users(pipeline):
    settings, _, _ = pipeline
    path = settings.storage_path / "assets" / "user_classification.parquet"
    df = home_counts(path)
    assert int(df["users"].sum()) == pq.read_metadata(path).num_rows
    assert set(df["classification"]) <= {"Local", "Tourist", "undetermined"}


def test_reports_fail_clearly_before_classification(tmp_path):
    settings = Settings(output_dir=str(tmp_path / "out"))
    with pytest.raises(dg.Failure, match="not materialized"):
        home_counts(settings.storage_path / "assets" / "user_classification.parquet")


def test_classification_bar_draws_all_classes():
    fig = plots.classification_bar({"Local": 3, "Tourist": 1}, "Germany")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Local", "Tourist", "undetermined"]
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["3 (75.0%)", "1 (25.0%)", "0 (0.0%)"]
    assert plots.figure_markdown(fig).startswith("![figure](data:image/png;base64,")


@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_homeloc_run_draws_the_figures(small_input, tmp_path):
    import os
    import subprocess

    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    r = subprocess.run([*HOMELOC, "run", "--input",
                        str(small_input), "--out", str(out), "--quiet"], capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in (out / "figures").iterdir())
    assert names == sorted(f"{n}.{ext}" for n in ("classification_report", "tourist_origins_map",
                                                  "study_country_share_map", "sensitivity",
                                                  "landscape_category_map", "landscape_share_map")
                           for ext in ("png", "svg"))
    # the sensitivity asset: the chosen (default) setting's row is the run's own classification
    import pandas as pd

    table = pd.read_csv(out / "sensitivity.csv")
    chosen = table[(table.min_userdays == 0) & (table.min_share == 0) & (table.min_margin == 0)]
    assert chosen.locals.iloc[0] == (pd.read_csv(out / "user_classification.csv").classification
                                     == "Local").sum()


# ------------------------------------------------------------ figure details
@pytest.fixture(scope="module")
def countries():
    from homeloc_assets.explain import load_countries

    return load_countries(Settings())


def _draw(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def _colorbar_axes(fig):
    return [a for a in fig.axes if a.get_label() == "<colorbar>"]


@pytest.mark.parametrize("vmin,vmax", [(0.004, 0.03), (0.001, 80.0), (1.0, 20_000.0),
                                       (3.0, 75_000.0), (2.0, 3.0), (1.0, 1_000_000.0)])
def test_log_colour_bar_labels_are_written_out_and_never_overlap(countries, vmin, vmax):
    """The old labels ran together (``0.0050.01``, ``5,0001e+04``)."""
    vals = {"FRA": vmin, "USA": vmax, "BRA": (vmin * vmax) ** 0.5}
    fig = plots.choropleth(countries, vals, "title", "label", log=True, highlight="DEU")
    renderer = _draw(fig)
    (cax,) = _colorbar_axes(fig)
    lo, hi = sorted(cax.get_xlim())
    labels = [t for t, v in zip(cax.get_xticklabels(), cax.get_xticks(), strict=True)
              if t.get_text() and lo <= v <= hi]
    assert len(labels) >= 2
    texts = [t.get_text() for t in labels]
    assert not any("e+" in t or "e-" in t for t in texts), texts
    boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.x0)
    for a, b in zip(boxes, boxes[1:], strict=False):
        assert a.x1 + 4 <= b.x0, texts  # at least 4 px between two labels


def test_format_number_and_log_ticks():
    assert [plots.format_number(v) for v in (5000, 10_000, 0.005, 0.01, 2.5, 0.25, 1e6)] == [
        "5,000", "10,000", "0.005", "0.01", "2.5", "0.25", "1,000,000"]
    assert plots.log_ticks(0.004, 0.03) == pytest.approx([0.005, 0.01, 0.02])
    assert plots.log_ticks(1, 100) == pytest.approx([1, 3, 10, 30, 100])  # 1-2-5 would be 7
    assert plots.log_ticks(1, 20_000) == pytest.approx([1, 10, 100, 1000, 10_000])
    for lo, hi in ((0.001, 50), (1, 1e7), (2, 3)):
        ticks = plots.log_ticks(lo, hi)
        assert 2 <= len(ticks) <= 6 and all(lo * 0.999 <= t <= hi * 1.001 for t in ticks)


def test_study_region_view_frames_the_study_country_and_its_neighbours(countries):
    import geopandas as gpd

    crs, xlim, ylim, neighbours = plots.region_frame(countries, "DEU")
    assert set(neighbours) == {"AUT", "BEL", "CHE", "CZE", "DNK", "FRA", "LUX", "NLD", "POL"}
    geoms = countries.set_index("country_code").geometry
    germany = gpd.GeoSeries([geoms["DEU"]], crs="EPSG:4326").to_crs(crs).total_bounds
    assert xlim[0] < germany[0] and germany[2] < xlim[1]
    assert ylim[0] < germany[1] and germany[3] < ylim[1]
    # framed on Europe, not on France's overseas parts: Paris and Warsaw in, Cayenne out
    pts = gpd.GeoSeries(gpd.points_from_xy([2.35, 21.0, -52.3], [48.86, 52.23, 4.9]),
                        crs="EPSG:4326").to_crs(crs)
    inside = [(xlim[0] < p.x < xlim[1]) and (ylim[0] < p.y < ylim[1]) for p in pts]
    assert inside == [True, True, False]
    assert xlim[1] - xlim[0] < 3_000_000  # metres: a regional view, not a continent

    fig = plots.choropleth(countries, {"AUT": 40, "FRA": 12, "USA": 300}, "t", "Tourists",
                           log=True, highlight="DEU", highlight_label="study country")
    maps = [a for a in fig.axes if a not in _colorbar_axes(fig)]
    assert len(maps) == 2  # the world and, beside it, the study region
    region = maps[1]
    assert region.get_xlim() == pytest.approx(xlim) and region.get_ylim() == pytest.approx(ylim)
    labels = {t.get_text() for t in region.texts}
    assert {"AUT\n40", "FRA\n12", "DEU", "POL"} <= labels


@pytest.mark.parametrize("figure", ["bar", "map"])
def test_text_is_readable_in_the_ui_copy(countries, figure):
    """Every text of the figure is at least 10 px high in the PNG the UI shows."""
    if figure == "bar":
        fig = plots.classification_bar({"Local": 3, "Tourist": 1}, "Germany")
    else:
        fig = plots.choropleth(countries, {"AUT": 40, "FRA": 12}, "t", "Tourists", log=True,
                               highlight="DEU", highlight_label="study country")
    dpi = reports.ui_dpi(fig)
    _draw(fig)
    sizes = [t.get_fontsize() for t in fig.findobj(lambda a: hasattr(a, "get_fontsize")
                                                   and hasattr(a, "get_text"))
             if t.get_text().strip() and t.get_visible()]
    assert sizes and min(sizes) * dpi / 72 >= 10, (min(sizes), dpi)


# ------------------------------------------------------------- region layers
@pytest.fixture(scope="module")
def layered(tmp_path_factory):
    """A run with an H3 layer and a polygon layer (Germany cut in two, study region West)."""
    import geopandas as gpd
    from shapely.geometry import box

    from homeloc_assets.synth import generate

    root = tmp_path_factory.mktemp("layer_reports")
    csv = root / "in" / "userdays.csv"
    csv.parent.mkdir()
    generate(1_500, csv, seed=23)
    halves = root / "halves.gpkg"
    gpd.GeoDataFrame({"name": ["West", "East"], "code": ["W", "E"]},
                     geometry=[box(5.0, 47.0, 10.5, 55.5), box(10.5, 47.0, 15.5, 55.5)],
                     crs="EPSG:4326").to_file(halves)
    settings = Settings(input_dir=str(csv.parent), output_dir=str(root / "out"), workers=1,
                        layers=f"cells=h3:3;halves={halves}#name,code", study_region="halves=W")
    defs, instance, keys = registered(settings, csv)
    layer_assets = [f"{a}_{n}" for n in ("cells", "halves")
                    for a in ("user_region_userdays", "user_home")]
    for selection, key in ((list(names.COUNTRY_ASSETS), None),
                           (BATCH_ASSETS + layer_assets, keys[0]),
                           ([names.USER_CLASSIFICATION], None)):
        materialize(defs, instance, selection, partition_key=key)
    return settings, defs, instance, keys


@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_each_layer_gets_a_map_of_the_locals_home_regions(layered):
    settings, defs, instance, keys = layered
    names = ["local_home_regions_cells", "local_home_regions_halves"]
    assert set(names) <= {k.to_user_string() for a in defs.assets for k in a.keys}
    res = dg.materialize(defs.assets, selection=names, instance=instance,
                         resources=defs.resources)
    assert res.success
    cls = pq.read_table(settings.storage_path / "assets" / "user_classification.parquet",
                        columns=["user_guid", "classification"])
    residents = cls.filter(pc.is_in(cls["classification"],
                                    value_set=pa.array(["Local", "Domestic tourist"])))
    from homeloc_assets.provenance import read_run_info
    from homeloc_assets.publish import generation_dir

    info = read_run_info(settings.storage_path / "assets" / "user_classification.parquet")
    figures = generation_dir(settings.output_dir, info.generation) / "figures"  # not published
    for event in res.get_asset_materialization_events():
        name = event.asset_key.to_user_string()
        layer = name.removeprefix("local_home_regions_")
        homes = pq.read_table(settings.storage_path / "assets" / f"user_home_{layer}"
                              / f"{keys[0]}.parquet", columns=["user_guid", "region_code"])
        want = homes.join(residents, "user_guid", join_type="inner")
        md = event.materialization.metadata
        assert md["users"].value == want.num_rows > 0
        assert md["regions"].value == len(set(want["region_code"].to_pylist()))
        top = want.group_by("region_code").aggregate([([], "count_all")]).sort_by(
            [("count_all", "descending")]).to_pylist()[0]
        assert f"({top['region_code']}) | {top['count_all']:,} |" in md["table"].value
        assert (figures / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # in the polygon layer the residents' homes split between the two halves, West the study region
    halves = pq.read_table(settings.storage_path / "assets" / "user_home_halves"
                           / f"{keys[0]}.parquet", columns=["user_guid", "region_code"])
    assert set(halves.join(residents, "user_guid", join_type="inner")["region_code"]
               .to_pylist()) == {"W", "E"}


def _pixels(fig):
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=60)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=int)


def test_vectorised_polygons_draw_what_geopandas_draws():
    """draw_polygons: holes, multipolygons, per-geometry colours and empties as GeoDataFrame.plot."""
    import geopandas as gpd
    import numpy as np
    from shapely.geometry import MultiPolygon, Polygon, box

    ring = Polygon([(0, 0), (10, 0), (10, 10), (0, 10)], [[(3, 3), (7, 3), (7, 7), (3, 7)]])
    multi = MultiPolygon([box(12, 0, 14, 2), box(12, 5, 15, 9)])
    frame = gpd.GeoDataFrame(geometry=[ring, Polygon(), multi, box(-5, -5, -1, -1)])
    colours = np.array([[0.8, 0.1, 0.1, 1.0], [0, 0, 0, 1.0], [0.1, 0.6, 0.1, 1.0],
                        [0.1, 0.1, 0.8, 1.0]])
    figs = []
    for vectorised in (False, True):
        fig = plots._figure(4, 3)
        ax = fig.add_subplot()
        if vectorised:
            plots.draw_polygons(ax, frame.geometry, colours, "#333333", 0.8)
        else:
            keep = ~frame.geometry.is_empty.to_numpy()
            frame[keep].plot(ax=ax, color=colours[keep], edgecolor="#333333", linewidth=0.8)
        ax.set_xlim(-6, 16)
        ax.set_ylim(-6, 11)
        ax.set_aspect("equal")  # what GeoDataFrame.plot sets on the axes
        ax.set_axis_off()
        figs.append(_pixels(fig))
    old, new = figs
    assert old.shape == new.shape
    assert (np.abs(old - new).max(axis=2) > 40).mean() < 0.001
    assert (new[new.shape[0] // 2 - 3, :, :] == 255).all(axis=1).any()  # the hole stays white


def test_cells_of_one_colour_are_drawn_as_one_path_with_the_same_pixels():
    """_add_cells groups cells by colour (one path each) and paints what one path per cell did."""
    import h3
    import numpy as np
    from matplotlib.collections import PolyCollection
    from shapely.geometry import Polygon

    cells = sorted(h3.grid_disk(h3.latlng_to_cell(52.5, 13.4, 7), 6))
    geoms = np.array([Polygon([(lng, lat) for lat, lng in h3.cell_to_boundary(c)])
                      for c in cells], dtype=object)
    rng = np.random.default_rng(3)
    colours = np.array([[0.9, 0.2, 0.1, 1.0], [0.1, 0.3, 0.9, 1.0], [0.5, 0.5, 0.5, 1.0]])
    rgba = colours[rng.integers(0, 3, len(geoms))]
    pics = []
    for grouped in (False, True):
        fig = plots._figure(4, 4)
        ax = fig.add_subplot()
        if grouped:
            plots._add_cells(ax, geoms, rgba)
            assert len(ax.collections[0].get_paths()) == 3  # one per colour
        else:
            verts = [np.asarray(g.exterior.coords) for g in geoms]
            ax.add_collection(PolyCollection(verts, facecolors=rgba, linewidths=0))
        ax.set_xlim(13.0, 13.8)
        ax.set_ylim(52.3, 52.7)
        ax.set_axis_off()
        pics.append(_pixels(fig))
    old, new = pics
    assert (np.abs(old - new).max(axis=2) > 60).mean() < 0.005
