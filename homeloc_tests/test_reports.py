"""Report assets materialise on a small run: PNG + SVG files and a Markdown preview."""

from __future__ import annotations

import base64

import dagster as dg
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from homeloc_assets import plots
from homeloc_assets.catalog import Catalog
from homeloc_assets.definitions import build_definitions
from homeloc_assets.defs.reports import REPORT_ASSETS, home_counts
from homeloc_assets.settings import Settings
from homeloc_tests.helpers import HOMELOC

REPORTS = ["classification_report", "tourist_origins_map", "study_country_share_map"]
BATCH_ASSETS = ["user_locations", "user_country_userdays", "user_home_locations", "rejected_rows"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A 2,000-user synthetic file run through countries, one batch and the classification."""
    from homeloc_assets.synth import generate

    root = tmp_path_factory.mktemp("reports")
    csv = root / "in" / "userdays.csv"
    csv.parent.mkdir()
    generate(2_000, csv, seed=21)
    settings = Settings(input_dir=str(csv.parent), output_dir=str(root / "out"), workers=1)
    defs = build_definitions(settings)
    instance = dg.DagsterInstance.ephemeral()
    _, keys = Catalog(settings.storage_path).register(csv, settings.batch_users)
    instance.add_dynamic_partitions("user_batches", keys)
    assets, resources = defs.assets, defs.resources
    for selection, key in ((["world_countries", "countries"], None), (BATCH_ASSETS, keys[0]),
                           (["user_classification"], None)):
        res = dg.materialize(assets, selection=selection, partition_key=key, instance=instance,
                             resources=resources)
        assert res.success
    return settings, defs, instance


def test_report_assets_are_wired():
    for a in REPORT_ASSETS:
        spec = next(iter(a.specs))
        assert dg.AssetKey("user_classification") in {d.asset_key for d in spec.deps}
        assert dg.AssetKey("countries") in {d.asset_key for d in spec.deps}
        assert spec.automation_condition is not None
        assert spec.group_name == "reports"
    assert sorted(a.key.to_user_string() for a in REPORT_ASSETS) == sorted(REPORTS)


@pytest.mark.slow
def test_reports_materialise_with_figures_and_previews(pipeline):
    settings, defs, instance = pipeline
    res = dg.materialize(defs.assets, selection=REPORTS, instance=instance,
                         resources=defs.resources)
    assert res.success
    cls = pq.read_table(settings.storage_path / "assets" / "user_classification.parquet")
    counts = {r["values"]: r["counts"] for r in pc.value_counts(cls["classification"]).to_pylist()}
    figures = settings.storage_path.parent / "figures"
    seen = set()
    for event in res.get_asset_materialization_events():
        name = event.asset_key.to_user_string()
        seen.add(name)
        md = event.materialization.metadata
        preview = md["preview"].value
        assert preview.startswith("![") and "(data:image/png;base64," in preview
        b64 = preview.split("base64,", 1)[1].split(")", 1)[0]
        assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(preview) < 200_000  # small enough for the event log
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
            assert "Top home countries" in preview
        if name == "study_country_share_map":
            assert md["users_with_home"].value == cls.num_rows
            local_share = counts.get("Local", 0) / cls.num_rows
            assert md["study_country_share"].value == pytest.approx(local_share, abs=1e-6)
    assert seen == set(REPORTS)


@pytest.mark.slow
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
