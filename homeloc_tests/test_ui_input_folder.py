"""Issue 11's way in through the watched folder, in a headless browser.

What README.md's UI section tells a researcher: ``homeloc ui --out out`` in
their folder (a real ``dagster dev``, its daemon running the sensors), then a
CSV dropped into ``data/input``. Here the CSV is made with
``homeloc synth --users 2000`` outside the folder (its ``.truth.csv`` would be
a second CSV there) and moved in; in Debian's Chromium:

* the input sensor's tick says it watches that folder and found one CSV, registered;
* the sensor launched the countries run and the batch run of that file's plan,
  both successful (its Runs tab);
* ``user_classification`` is shown materialised with the file's users, and its
  Locals and Tourists are the synthetic truth's.

Nothing is started from the command line after ``homeloc ui``. Sensor ticks and
automation evaluations every 5 s, the settle time 5 s (``HOMELOC_SENSOR_*``,
``HOMELOC_AUTOMATION_INTERVAL_SECONDS``); every wait polls the UI with a
generous deadline. Screenshots go to each test's ``tmp_path``.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import time
from collections import Counter

import pytest

from homeloc_tests.helpers import HOMELOC
from homeloc_tests.test_ui_browser import sync_api
from homeloc_tests.test_ui_walk import _clean_env, _metadata_value, homeloc_ui, ui_page

# about 4 minutes on two shared cores (CI time: make test-all, not make test)
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.heavy]

USERS = 2000
#: how long the UI may take for each step (the first runs load the country polygons)
DEADLINE_S = 420
expect = sync_api.expect


@pytest.fixture(scope="module")
def dropped(tmp_path_factory):
    """``homeloc ui`` serving a fresh folder, and a synthetic CSV moved into its watched folder."""
    clone = tmp_path_factory.mktemp("researcher")
    env = _clean_env(HOMELOC_SENSOR_INTERVAL_SECONDS="5", HOMELOC_SENSOR_SETTLE_SECONDS="5",
                     HOMELOC_AUTOMATION_INTERVAL_SECONDS="5", HOMELOC_WORKERS="1")
    synth = subprocess.run([*HOMELOC, "synth", "--users", str(USERS), "--out",
                            "downloads/userdays.csv", "--seed", "3"],
                           cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    assert synth.returncode == 0, synth.stderr
    with open(clone / "downloads" / "userdays.csv.truth.csv", newline="") as fh:
        truth = Counter(row["classification"] for row in csv.DictReader(fh))
    assert sum(truth.values()) == USERS and truth["Local"] and truth["Tourist"], truth
    with homeloc_ui(clone, env, clone / "ui.log") as url:
        watched = clone / "data" / "input"
        assert watched.is_dir() and not list(watched.iterdir())  # made by `homeloc ui`, empty
        target = watched / "userdays.csv"
        os.replace(clone / "downloads" / "userdays.csv", target)
        yield {"url": url, "clone": clone, "watched": watched, "csv": target, "truth": truth}


@pytest.fixture(scope="module")
def page(dropped):
    """One Chromium page for the module."""
    with ui_page(dropped["url"]) as pg:
        yield pg


def _poll(check, what: str, timeout: float = DEADLINE_S) -> None:
    """Call ``check()`` every few seconds until it returns True; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not shown within {timeout:.0f} s")
        time.sleep(3)


def _sensor_page(page, url: str) -> None:
    page.goto(f"{url}/locations/homeloc/sensors/homeloc_input_sensor", timeout=60_000)


def _run_rows(page):
    """The rows of the runs list on the open page (not the sensor's own table above it)."""
    return page.locator("[class*=VirtualizedTable_row]")


def test_the_sensor_says_it_found_the_file(dropped, page, tmp_path):
    message = f"watching {dropped['watched']}: 1 CSV file(s) (1 registered)"

    def latest_tick_says_it() -> bool:
        _sensor_page(page, dropped["url"])
        latest = page.locator("tr").filter(has=page.locator("td", has_text="Latest tick"))
        tag = latest.get_by_text("0 runs requested", exact=True)  # a quiet tick says what it sees
        try:
            tag.hover(timeout=10_000)
            expect(page.get_by_text(message, exact=True)).to_be_visible(timeout=5_000)
        except (sync_api.TimeoutError, AssertionError):
            return False
        return True

    _poll(latest_tick_says_it, repr(message))
    page.screenshot(path=str(tmp_path / "sensor_tick.png"))


def test_the_sensor_launched_the_runs_of_the_file(dropped, page, tmp_path):
    from homeloc_assets.catalog import Catalog

    st = dropped["csv"].stat()
    plan = Catalog(dropped["clone"] / "out" / ".homeloc").dataset_plan_of(
        dropped["csv"], st.st_size, st.st_mtime_ns)
    assert plan is not None, "the file as it is now is not the data set's"
    plan_id = plan[0]

    def runs_succeeded() -> bool:
        _sensor_page(page, dropped["url"])
        page.get_by_role("button", name="Runs", exact=True).click()
        rows = _run_rows(page)
        countries = rows.filter(has=page.get_by_text("homeloc_countries_job", exact=True))
        batches = rows.filter(has=page.get_by_text("homeloc_batches_job", exact=True)).filter(
            has_text=f"homeloc/plan_id: {plan_id}")
        try:
            for row in (countries, batches):
                expect(row.get_by_text("Success", exact=True)).to_be_visible(timeout=5_000)
        except AssertionError:
            return False
        return True

    _poll(runs_succeeded, f"the sensor's successful countries run and batch run of {plan_id}")
    for job in ("homeloc_countries_job", "homeloc_batches_job"):  # launched by the sensor
        row = _run_rows(page).filter(has=page.get_by_text(job, exact=True))
        expect(row).to_have_count(1)
        expect(row).to_contain_text("homeloc_input_sensor")
    page.screenshot(path=str(tmp_path / "sensor_runs.png"))


def test_the_classification_shows_the_files_users(dropped, page, tmp_path):
    truth = dropped["truth"]

    def materialised() -> bool:
        page.goto(f"{dropped['url']}/assets/user_classification", timeout=60_000)
        try:
            expect(_metadata_value(page, "users", overview=True)).to_be_visible(timeout=10_000)
        except AssertionError:
            return False
        return True

    _poll(materialised, "a materialisation of user_classification")
    expect(page.get_by_text("Latest materialization").first).to_be_visible()
    assert "Never materialized" not in page.inner_text("body")
    for label, value in (("users", USERS), ("users_with_home", USERS),
                         ("locals", truth["Local"]), ("tourists", truth["Tourist"]),
                         ("undetermined", 0)):
        expect(_metadata_value(page, label, overview=True)).to_have_text(
            re.compile(rf"^\s*{value}\s*$"))
    page.screenshot(path=str(tmp_path / "user_classification.png"), full_page=True)
