"""Issue 11's check: a headless browser walk of the UI after ``make run``.

What a researcher does on a fresh clone, with the real command line: a
3,000-user synthetic sample in ``data/`` (as ``make run`` writes it),
``homeloc run --input data/sample_userdays.csv --out OUT`` (the CLI's own
persistent instance, ``OUT/.homeloc/dagster_home``), then ``homeloc ui --out OUT``
(a real ``dagster dev``, daemon included) from the clone's folder, then in
Debian's Chromium:

* the catalog shows every asset of the definitions materialised (the batch
  assets: every partition);
* each report figure is on its asset's page as it opens, loaded and readable,
  served by ``/logs/`` from ``DAGSTER_HOME/storage/homeloc_figures``; in a
  1280 px window drawn at its own size, the metadata table scrolling to it;
* two partitions of ``user_home_locations`` show their own ``users``, equal to
  the batch stats files in ``OUT/.homeloc/batch_stats``;
* ``homeloc_exports`` shows the home-countries table (equal to
  ``home_countries.csv``) and the published generation; ``homeloc_published``
  is materialised;
* the input sensor's tick says what it watches (``watching …/data/input: 0 CSV
  file(s); …``);
* and the UI recomputed nothing ``homeloc run`` had done (no new runs).

Screenshots go to each test's ``tmp_path``. The batch size is set through
``HOMELOC_BATCH_USERS`` for both commands (2 batches of 1,500 users). That a
``homeloc ui --input F`` sensor keeps the batches of ``homeloc run --batch-users N``
(it used to re-plan F with its own size) is ``test_sensor_after_run.py``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest

from homeloc_tests.helpers import HOMELOC
from homeloc_tests.test_ui_browser import (
    _free_port,
    _skip_community_dialog,
    assert_figure_readable,
    chromium_page,
    figure_shown,
    stop_group,
    sync_api,
    wait_for_server,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.heavy]  # CI time (3-4 min)

USERS, BATCH_USERS = 3000, 1500
#: the figure assets and the alt text of their picture
FIGURES = {
    "classification_report": "Locals and Tourists",
    "tourist_origins_map": "Tourists' home countries",
    "study_country_share_map": "Share of users per home country",
    "home_rule_sensitivity": "sensitivity",
    "landscape_category_map": "Landscape categories",
    "landscape_share_map": "Tourist share",
}
expect = sync_api.expect


def _clean_env(**extra: str) -> dict:
    """This environment without any HOMELOC_*/DAGSTER_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOMELOC_", "DAGSTER_"))}
    env.update(extra, DAGSTER_DISABLE_TELEMETRY="1")
    return env


def _run_records(home: Path) -> list:
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        return list(instance.get_run_records())


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    """A clone folder after ``homeloc run``, and ``homeloc ui`` serving it (stopped afterwards)."""
    from homeloc_assets.synth import generate

    clone = tmp_path_factory.mktemp("clone")
    data, out = clone / "data", clone / "out"
    sample = data / "sample_userdays.csv"
    generate(USERS, sample, seed=7)
    env = _clean_env(HOMELOC_BATCH_USERS=str(BATCH_USERS), HOMELOC_WORKERS="1")
    run = subprocess.run([*HOMELOC, "run", "--input", "data/sample_userdays.csv", "--out", "out"],
                         cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    home = out / ".homeloc" / "dagster_home"
    stats = {p.stem: json.loads(p.read_text())
             for p in sorted((out / ".homeloc" / "batch_stats").glob("*.json"))}
    assert len(stats) == USERS // BATCH_USERS, sorted(stats)
    runs_before = len(_run_records(home))

    log_path = clone / "ui.log"
    ui_env = dict(env, HOMELOC_SENSOR_INTERVAL_SECONDS="5")  # a tick soon after the start
    with homeloc_ui(clone, ui_env, log_path) as url:
        yield {"url": url, "clone": clone, "out": out, "home": home, "stats": stats,
               "runs_before": runs_before, "log": log_path, "run_stderr": run.stderr}


@contextlib.contextmanager
def homeloc_ui(clone: Path, env: dict, log_path: Path):
    """``homeloc ui --out out`` run in ``clone`` on a free port: its URL once it answers.

    Its output goes to ``log_path``; afterwards every process of it is ended.
    """
    port = _free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*HOMELOC, "ui", "--out", "out", "--port", str(port)],
                                cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for_server(proc, url, log_path, timeout=120)
            yield url
        finally:
            gone = stop_group(proc)
    assert gone, f"processes of `homeloc ui` (group {proc.pid}) outlived SIGKILL"


@contextlib.contextmanager
def ui_page(url: str):
    """A Chromium page on ``url``'s catalog, the community dialog dismissed (once per instance)."""
    with chromium_page() as pg:
        pg.goto(f"{url}/assets", timeout=60_000)
        _skip_community_dialog(pg)
        yield pg


@pytest.fixture(scope="module")
def _browser(walk):
    """One Chromium page for the walk."""
    with ui_page(walk["url"]) as pg:
        yield pg


@pytest.fixture()
def page(_browser):
    _browser.set_viewport_size({"width": 1600, "height": 1000})
    return _browser


def _asset_names() -> tuple[list[str], set[str]]:
    """Every asset of the definitions ``homeloc ui`` loads, and the partitioned ones."""
    from homeloc_assets.definitions import build_definitions
    from homeloc_assets.settings import Settings

    defs = build_definitions(Settings.from_env(_clean_env()))
    names, partitioned = [], set()
    for a in defs.assets:
        for key in a.keys:
            names.append(key.to_user_string())
            if a.partitions_def is not None:
                partitioned.add(key.to_user_string())
    return sorted(names), partitioned


def test_ui_says_what_it_serves(walk):
    text = walk["log"].read_text(errors="replace")
    assert (f"homeloc ui: http://127.0.0.1:{walk['url'].rsplit(':', 1)[1]} — instance "
            f"{walk['home']}; exports {walk['out']}; the input sensor watches "
            f"{walk['clone'] / 'data' / 'input'} (0 CSV file(s) now)") in text, text[:2000]
    assert (walk["clone"] / "data" / "input").is_dir()


def test_every_asset_is_shown_materialised(walk, page, tmp_path):
    names, partitioned = _asset_names()
    assert {"user_home_locations", "homeloc_exports", "homeloc_published",
            *FIGURES} <= set(names)
    page.set_viewport_size({"width": 1600, "height": 120 * len(names) + 400})  # no virtual rows
    page.goto(f"{walk['url']}/assets", timeout=60_000)
    rows = page.locator("[class*=VirtualizedTable_row]")
    statuses = {}
    for name in names:
        row = rows.filter(has=page.locator(f'a[href="/assets/{name}"]'))
        expect(row).to_have_count(1)
        expect(row).not_to_contain_text("Loading")  # the status comes after the row
        statuses[name] = row.inner_text()
    page.screenshot(path=str(tmp_path / "catalog.png"), full_page=True)
    assert "Never materialized" not in page.inner_text("body")
    for name, text in statuses.items():
        if name in partitioned:
            assert re.search(rf"\b{len(walk['stats'])} partitions\b", text), (name, text)
        else:
            assert "Materialized" in text, (name, text)
    # every partition of every batch asset
    for name in sorted(partitioned):
        page.goto(f"{walk['url']}/assets/{name}?view=partitions", timeout=60_000)
        n = len(walk["stats"])
        expect(page.get_by_text(f"Materialized ({n})", exact=True)).to_be_visible()
        for state in ("Missing", "Failed", "Materializing"):
            expect(page.get_by_text(f"{state} (0)", exact=True)).to_be_visible()
    page.screenshot(path=str(tmp_path / "partitions.png"))


def test_report_figures_are_inline(walk, page, tmp_path):
    """Each figure on its page, loaded, readable; README: served by ``homeloc ui``'s own
    ``/logs/`` route from the instance's ``storage/homeloc_figures/``."""
    folder = walk["home"] / "storage" / "homeloc_figures"
    for name, alt in FIGURES.items():
        page.goto(f"{walk['url']}/assets/{name}", timeout=60_000)
        shown = figure_shown(page, alt)
        assert_figure_readable(shown)
        stem = re.fullmatch(r"/logs/homeloc_figures/([a-z_]+-[0-9a-f]{16})/png", shown["src"])
        assert stem, shown
        with urllib.request.urlopen(f"{walk['url']}{shown['src']}", timeout=30) as r:
            assert r.headers["content-type"] == "image/png", dict(r.headers)
            assert r.read() == (folder / f"{stem[1]}.png").read_bytes(), name
        page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)


def test_figures_in_a_laptop_window(walk, page, tmp_path):
    """At 1280 px each figure is drawn at its own size (Dagster's Markdown cannot scale an
    image): loaded, within the window's width, wider than its column, and the metadata
    table scrolls sideways to it (README's UI section)."""
    page.set_viewport_size({"width": 1280, "height": 900})
    for name, alt in FIGURES.items():
        page.goto(f"{walk['url']}/assets/{name}", timeout=60_000)
        shown = figure_shown(page, alt)
        assert shown["natural"] > 0 and abs(shown["width"] - shown["natural"]) <= 1, shown
        assert shown["width"] <= 1280, shown
        assert shown["right"] > shown["clip"] + 1, shown  # would Dagster now scale it?
        assert shown["overflow"] in ("auto", "scroll"), shown  # then reachable by scrolling
        page.screenshot(path=str(tmp_path / f"{name}_1280.png"))


def _metadata_value(page, label: str, overview: bool = False):
    """The value cell of metadata entry ``label`` on the open asset page.

    The Overview tab's table is key | timestamp | value; a partition's is key | value.
    """
    row = page.locator("tr").filter(has=page.locator(
        "td:first-child", has_text=re.compile(rf"^\s*{re.escape(label)}\s*$")))
    return row.first.locator("> td").nth(2 if overview else 1)


def test_each_partition_shows_its_own_counts(walk, page, tmp_path):
    stats = walk["stats"]
    keys = sorted(stats)[:2]
    assert stats[keys[0]]["users"] != stats[keys[1]]["users"]  # else the check proves nothing
    assert sum(s["users"] for s in stats.values()) == USERS
    for key in keys:
        page.goto(f"{walk['url']}/assets/user_home_locations?view=partitions&partition={key}",
                  timeout=60_000)
        expect(page.get_by_text("Latest materialization").first).to_be_visible()
        for label in ("users", "users_with_home", "ties"):
            expect(_metadata_value(page, label)).to_have_text(
                re.compile(rf"^\s*{stats[key][label]}\s*$"))
        page.screenshot(path=str(tmp_path / f"partition_{key}.png"), full_page=True)


def test_exports_show_home_countries_and_are_published(walk, page, tmp_path):
    out = walk["out"]
    with open(out / "home_countries.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert table, "home_countries.csv is empty"
    page.goto(f"{walk['url']}/assets/homeloc_exports", timeout=60_000)
    expect(_metadata_value(page, "home_countries", overview=True)).to_be_visible()
    for row in table[:3]:  # the largest home countries, each as a row of the table
        tr = page.locator("tr").filter(has=page.get_by_role("cell", name=row["code"], exact=True))
        expect(tr.last).to_be_visible()  # the innermost: the row of the table itself
        cells = [c.strip() for c in tr.last.locator("td").all_inner_texts()]
        assert cells[:5] == [row["country"], row["code"], row["users"], row["locals"],
                             row["tourists"]], (cells, row)
    generation = os.readlink(out / "current").rstrip("/").rsplit("/", 1)[-1]
    expect(_metadata_value(page, "generation", overview=True)).to_have_text(re.compile(re.escape(generation)))
    page.screenshot(path=str(tmp_path / "homeloc_exports.png"), full_page=True)

    page.goto(f"{walk['url']}/assets/homeloc_published", timeout=60_000)
    expect(page.get_by_text("Latest materialization").first).to_be_visible()
    assert "Never materialized" not in page.inner_text("body")
    page.screenshot(path=str(tmp_path / "homeloc_published.png"), full_page=True)


def test_sensor_tick_says_what_it_watches(walk, page, tmp_path):
    watched = walk["clone"] / "data" / "input"
    message = f"watching {watched}: 0 CSV file(s); put a userdays CSV there to start"
    page.goto(f"{walk['url']}/locations/homeloc/sensors/homeloc_input_sensor", timeout=60_000)
    tag = page.locator("table").get_by_text("0 runs requested", exact=True).first
    expect(tag).to_be_visible(timeout=60_000)  # a tick in the table (one every 5 s)
    tag.hover()
    expect(page.get_by_text(message, exact=True)).to_be_visible()
    page.screenshot(path=str(tmp_path / "sensor_tick.png"))


def test_the_ui_recomputed_nothing(walk):
    """Opening the UI on what ``homeloc run`` made launches no runs (sensor, automation)."""
    records = _run_records(walk["home"])
    new = [(r.dagster_run.job_name, r.dagster_run.tags.get("dagster/sensor_name"))
           for r in records[: len(records) - walk["runs_before"]]]
    assert not new, new
