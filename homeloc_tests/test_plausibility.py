"""Runs that stop on implausible input say why: rejects written first, swapped coordinates named."""

import subprocess

import pandas as pd
import pytest

from homeloc_assets.settings import Settings
from homeloc_tests.helpers import homeloc


def run(*args: str) -> subprocess.CompletedProcess:
    return homeloc(*args, check=False, timeout=300)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from homeloc_assets.synth import generate

    path = tmp_path_factory.mktemp("plaus") / "userdays.csv"
    generate(300, path, seed=3)
    return path


def last_line(res: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("homeloc: error:"), res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    return lines[-1]


@pytest.mark.slow
def test_reject_share_stop_writes_rejected_rows_and_names_reasons(synth, tmp_path):
    lines = synth.read_text().splitlines()
    body = lines[1:]
    # two of every three rows get a bad hll value: well above the default limit
    bad = [",".join([*ln.split(",")[:3], "\\xzz"]) if i % 3 else ln for i, ln in enumerate(body)]
    src = tmp_path / "bad.csv"
    src.write_text("\n".join([lines[0], *bad]) + "\n")
    out = tmp_path / "out"
    res = run("run", "--input", str(src), "--out", str(out), "--workers", "1", "--quiet",
              "--batch-users", "100", "--no-figures")
    assert res.returncode == 2, res.stderr
    msg = last_line(res)
    rej_path = (out / "stopped_run" / "rejected_rows.csv").resolve()
    assert str(rej_path) in msg and "--max-reject-share" in msg, msg
    rej = pd.read_csv(rej_path)
    assert list(rej.columns) == ["line", "reason", "raw", "batch"]
    n_bad = sum(1 for i in range(len(body)) if i % 3)
    assert len(rej) == n_bad
    # global line numbers: the physical lines of the input (header is line 1)
    expected = [i + 2 for i in range(len(body)) if i % 3]
    assert sorted(rej.line.tolist()) == expected
    top = rej.reason.value_counts()
    assert f'"{top.index[0]}" ({top.iloc[0]:,})' in msg, msg
    # nothing else is published
    assert not (out / "user_home_locations.csv").exists()
    assert not (out / "summary.json").exists()


@pytest.mark.heavy
def test_swapped_latitude_longitude_stops_naming_the_cause(synth, tmp_path):
    df = pd.read_csv(synth, dtype=str, keep_default_na=False)
    src = tmp_path / "swapped.csv"
    df.rename(columns={"latitude": "longitude", "longitude": "latitude"})[
        ["user_guid", "latitude", "longitude", "userday_hll"]].to_csv(src, index=False)
    out = tmp_path / "out"
    # the synth's few points east of 90°E become latitudes out of range: rejected, accepted here
    accept = ("--max-reject-share", "0.1")
    res = run("run", "--input", str(src), "--out", str(out), "--workers", "1", "--quiet",
              "--no-figures", *accept)
    assert res.returncode == 2, res.stderr
    msg = last_line(res)
    assert "in no country" in msg and "--max-no-country-share" in msg, msg
    assert "latitude and longitude look swapped" in msg, msg
    assert not (out / "user_home_locations.csv").exists()
    # the same file passes when the user accepts the share; the failed WARN check of the
    # batches reaches the user as one warning line, even with --quiet
    out2 = tmp_path / "out2"
    res = run("run", "--input", str(src), "--out", str(out2), "--workers", "1", "--quiet",
              "--no-figures", "--max-no-country-share", "1", *accept)
    assert res.returncode == 0, res.stderr
    assert (out2 / "user_home_locations.csv").exists()
    warn = [ln for ln in res.stderr.splitlines() if ln.startswith("homeloc: warning:")]
    assert any("user_locations/points_in_a_country did not pass" in ln
               and "share_in_no_country=" in ln for ln in warn), res.stderr


def test_max_no_country_share_setting():
    assert Settings().max_no_country_share == 0.2
    assert Settings.from_env({"HOMELOC_MAX_NO_COUNTRY_SHARE": "0.5"}).max_no_country_share == 0.5
    with pytest.raises(ValueError, match="HOMELOC_MAX_NO_COUNTRY_SHARE"):
        Settings.from_env({"HOMELOC_MAX_NO_COUNTRY_SHARE": "1.5"})
