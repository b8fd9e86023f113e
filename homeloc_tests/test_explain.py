"""``homeloc explain``: same numbers as ``homeloc run``'s exports, exit 2 for unknown users, seeks."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

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
                    "runner_up_userdays", "margin", "tie"):
            assert ex.home[col] == home[col], (guid, col)
        assert ex.total_userdays == home["total_userdays"]
        want_cls = cls.filter(pc.equal(cls["user_guid"], guid))["classification"][0].as_py()
        assert ex.classification == want_cls
        assert home["country"] in ex.reason() and want_cls in ex.reason()


@pytest.mark.slow
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
