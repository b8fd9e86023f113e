"""The Dagster UI in a real browser: the asset graph, and one batch materialised from the UI.

Starts ``dagster-webserver`` on the project's ``workspace.yaml`` with a
temporary ``DAGSTER_HOME`` and ``HOMELOC_*`` folders holding a small planned
input, drives Debian's Chromium (never a downloaded browser) with Playwright,
and keeps screenshots in ``test-artifacts/``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CONTRACT_ASSETS = [
    "world_countries",
    "countries",
    "user_locations",
    "user_country_userdays",
    "user_home_locations",
    "user_classification",
]
SERVER_START_S = 90
RUN_FINISH_S = 120

if not Path(CHROMIUM).exists():
    pytest.skip(f"Debian's Chromium is not installed at {CHROMIUM} (make browser-setup)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(proc: subprocess.Popen, url: str, log: Path, timeout: float = SERVER_START_S) -> None:
    """Until ``url/server_info`` answers 200; fails the test if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[:4]} exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"no webserver at {url} after {timeout}s; see {log}")
        time.sleep(0.5)


def stop_group(proc: subprocess.Popen, timeout: float = 15) -> bool:
    """End ``proc`` (started with ``start_new_session``) and every process of its group.

    SIGTERM first; ``dagster dev``'s code servers outlive it until their
    heartbeat times out, so the group then gets SIGKILL in any case. True when
    no process of the group is left within ``timeout`` seconds.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@contextlib.contextmanager
def chromium_page(width: int = 1600, height: int = 1000):
    """A page of Debian's headless Chromium (closed afterwards)."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            pg = browser.new_page(viewport={"width": width, "height": height})
            pg.set_default_timeout(30_000)
            yield pg
        finally:
            browser.close()


def figure_shown(pg, alt: str) -> dict:
    """The figure ``img[alt=alt]`` of the open asset page, once it has loaded: its sizes.

    ``natural`` (the PNG's width, 0 if it did not load), the drawn ``width`` and
    ``height``, its ``right`` edge, ``clip`` (where the nearest clipping
    ancestor ends) and that ancestor's ``overflow`` (None: the window), and ``src``.
    """
    img = pg.locator(f'img[alt="{alt}"]')
    img.first.wait_for(state="visible", timeout=30_000)
    img.first.scroll_into_view_if_needed()
    pg.wait_for_function(
        "(alt) => { const i = document.querySelector(`img[alt=\"${alt}\"]`);"
        " return i && i.complete && i.naturalWidth > 0; }", arg=alt, timeout=30_000)
    return img.first.evaluate(
        """i => {
            const r = i.getBoundingClientRect();
            let clip = document.documentElement.clientWidth, overflow = null;
            for (let el = i.parentElement; el; el = el.parentElement) {  // ancestors that clip
                const o = getComputedStyle(el).overflowX;
                if (o !== 'visible') { clip = Math.min(clip, el.getBoundingClientRect().right); }
                if (o !== 'visible' && overflow === null) { overflow = o; }
            }
            return {natural: i.naturalWidth, width: r.width, height: r.height, right: r.right,
                    clip: clip, overflow: overflow, src: i.getAttribute('src')};
        }""")


def assert_figure_readable(shown: dict) -> None:
    """Served from the compute-log folder, loaded, drawn at least 700 px wide and not cut off."""
    assert shown["src"].startswith("/logs/homeloc_figures/"), shown
    assert shown["natural"] >= 700, shown
    assert shown["width"] >= 700 and shown["height"] >= 250, shown  # drawn, not a thumbnail
    assert shown["right"] <= shown["clip"] + 1, shown  # whole, not cut off at the right


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """A Dagster home and HOMELOC_* folders with a planned 2-batch input and the countries."""
    import dagster as dg

    from homeloc_assets.catalog import Catalog
    from homeloc_assets.definitions import build_definitions
    from homeloc_assets.settings import Settings
    from homeloc_assets.synth import generate

    root = tmp_path_factory.mktemp("ui")
    home, inp, out = root / "dagster_home", root / "input", root / "out"
    for d in (home, inp, out):
        d.mkdir()
    # The webserver runs no daemon: launch runs directly instead of queueing them.
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\n"
        "run_coordinator:\n  module: dagster.core.run_coordinator\n"
        "  class: DefaultRunCoordinator\n"
    )
    env = {
        "DAGSTER_HOME": str(home),
        "HOMELOC_INPUT_DIR": str(inp),
        "HOMELOC_OUTPUT_DIR": str(out),
        "HOMELOC_WORKERS": "1",
        "HOMELOC_BATCH_USERS": "300",
    }
    csv = inp / "userdays.csv"
    generate(600, csv, seed=5)
    settings = Settings.from_env(env)
    _, keys = Catalog(settings.storage_path).register(csv, settings.batch_users)
    instance = dg.DagsterInstance.from_config(str(home))
    instance.add_dynamic_partitions("user_batches", keys)
    defs = build_definitions(settings)
    res = dg.materialize(defs.assets, selection=["world_countries", "countries"],
                         instance=instance, resources=defs.resources)
    assert res.success
    return env, keys, instance, settings


@pytest.fixture(scope="module")
def webserver(planned):
    """``dagster-webserver`` on a free port; killed (with its children) afterwards."""
    env_extra = planned[0]
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOMELOC_", "DAGSTER_"))}
    env.update(env_extra, DAGSTER_DISABLE_TELEMETRY="1")
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / "webserver.log", "wb")  # noqa: SIM115 - closed in finally
    exe = Path(sys.executable).with_name("dagster-webserver")
    proc = subprocess.Popen(
        [str(exe), "-w", str(ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(proc, url, Path(log.name))
        yield url
    finally:
        stop_group(proc)
        log.close()


@pytest.fixture()
def page(webserver):
    with chromium_page() as pg:
        yield pg


def _skip_community_dialog(pg) -> None:
    """Close "Join the Dagster community" if it shows (once per instance)."""
    skip = pg.get_by_role("button", name="Skip")
    with contextlib.suppress(sync_api.TimeoutError):
        skip.wait_for(state="visible", timeout=8_000)
        skip.click()


@pytest.mark.heavy  # CI time; test_ui_walk.py checks every asset
def test_asset_graph_shows_the_contract(webserver, page):
    page.goto(f"{webserver}/asset-groups", timeout=60_000)
    _skip_community_dialog(page)
    page.locator("[aria-label=settings]").last.click()
    page.get_by_role("menuitem", name="Expand all groups").click()
    page.keyboard.press("Escape")
    carets = page.locator("[aria-label=arrow_drop_down]")  # the groups in the side tree
    carets.first.wait_for()
    for i in range(carets.count()):
        carets.nth(i).click()
    for name in CONTRACT_ASSETS:
        loc = page.get_by_text(name, exact=True)
        loc.first.wait_for(state="visible")
        assert any(x.is_visible() for x in loc.all()), name
    for _ in range(2):
        page.locator("[aria-label=zoom_out]").first.click()
    page.wait_for_timeout(800)  # let the graph settle for the picture
    page.screenshot(path=str(ARTIFACTS / "asset_graph.png"))


@pytest.mark.heavy  # CI time; test_ui_walk.py shows every figure inline after homeloc run
def test_materialise_one_batch_from_the_ui(planned, webserver, page):
    import dagster as dg

    _, keys, instance, settings = planned
    key = keys[0]
    page.goto(f"{webserver}/assets/user_home_locations", timeout=60_000)
    _skip_community_dialog(page)
    page.locator("button", has_text="Materialize…").first.click()
    # a multi-asset: the UI says the other three outputs come along
    confirm = page.get_by_role("button", name="Confirm")
    with contextlib.suppress(sync_api.TimeoutError):
        confirm.wait_for(state="visible", timeout=10_000)
        confirm.click()
    page.get_by_text("Select a partition or create one").click()
    page.get_by_text(key, exact=True).first.click()
    page.get_by_text("Launch runs to materialize").click()  # close the partition list
    page.screenshot(path=str(ARTIFACTS / "launch_dialog.png"))
    page.get_by_role("button", name=re.compile(r"^Launch 1 run$")).click()

    deadline = time.monotonic() + RUN_FINISH_S
    run = None
    while time.monotonic() < deadline:
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": key}))
        if runs and runs[0].is_finished:
            run = runs[0]
            break
        time.sleep(1)
    assert run is not None, f"no finished run for {key} within {RUN_FINISH_S}s"
    page.goto(f"{webserver}/runs/{run.run_id}", timeout=60_000)
    page.get_by_text("Success").first.wait_for(state="visible", timeout=30_000) \
        if run.status == dg.DagsterRunStatus.SUCCESS else page.wait_for_timeout(2000)
    page.screenshot(path=str(ARTIFACTS / "batch_run.png"))
    assert run.status == dg.DagsterRunStatus.SUCCESS, run.status
    assert (settings.storage_path / "assets" / "user_home_locations" / f"{key}.parquet").exists()
    assert not (settings.storage_path / "assets" / "user_home_locations"
                / f"{keys[1]}.parquet").exists()


@pytest.mark.heavy  # CI time; test_ui_walk.py shows every figure inline after homeloc run
def test_report_figure_is_displayed_on_the_asset_page(planned, webserver, page):
    """The map is a picture on the asset's page as it opens: no "[Show Markdown]" click.

    The reports are materialised into the webserver's instance (every batch,
    the classification, the three reports); the asset's page must then show an
    ``<img>`` that loaded (``naturalWidth > 0``) and is drawn at a readable size.
    """
    import dagster as dg

    from homeloc_assets.definitions import build_definitions

    env, keys, instance, settings = planned
    defs = build_definitions(settings)
    batch = ["user_locations", "user_country_userdays", "user_home_locations", "rejected_rows"]
    for key in keys:
        assert dg.materialize(defs.assets, selection=batch, partition_key=key, instance=instance,
                              resources=defs.resources).success
    reports = ["classification_report", "tourist_origins_map", "study_country_share_map",
               "home_rule_sensitivity"]
    assert dg.materialize(defs.assets, selection=["user_classification", *reports],
                          instance=instance, resources=defs.resources).success
    for name, alt in (("tourist_origins_map", "Tourists' home countries"),
                      ("classification_report", "Locals and Tourists"),
                      ("home_rule_sensitivity", "sensitivity")):
        page.goto(f"{webserver}/assets/{name}", timeout=60_000)
        _skip_community_dialog(page)
        assert_figure_readable(figure_shown(page, alt))
        if name == "tourist_origins_map":  # the top-10 table is inline too
            assert page.get_by_text("Top home countries of Tourists").first.is_visible()
        page.screenshot(path=str(ARTIFACTS / f"report_{name}.png"), full_page=True)
    # a narrower window: the column is narrower than the picture, which then scrolls sideways
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"{webserver}/assets/tourist_origins_map", timeout=60_000)
    img = page.locator('img[alt="Tourists\' home countries"]').first
    img.wait_for(state="visible", timeout=30_000)
    narrow = img.evaluate(
        """i => {
            for (let el = i.parentElement; el; el = el.parentElement) {
                const o = getComputedStyle(el).overflowX;
                if (o !== 'visible') {
                    return {overflow: o, width: el.clientWidth, scroll: el.scrollWidth,
                            img: i.getBoundingClientRect().width};
                }
            }
            return null;
        }""")
    assert narrow is not None
    if narrow["scroll"] > narrow["width"] + 1:  # cut by the column: it must scroll
        assert narrow["overflow"] in ("auto", "scroll"), narrow
