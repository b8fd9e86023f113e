"""A ``.csv.gz`` input is decompressed once into the storage folder and reused."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from homeloc_assets.catalog import Catalog
from homeloc_assets.inputs import InputError, plan_batches
from homeloc_tests.helpers import HOMELOC


def _gz(src: Path, dst: Path) -> Path:
    with open(src, "rb") as a, gzip.open(dst, "wb") as b:
        shutil.copyfileobj(a, b)
    return dst


@pytest.mark.slow
def test_register_decompresses_once_and_reuses(tmp_path, small_input):
    gz = _gz(small_input, tmp_path / "in.csv.gz")
    cat = Catalog(tmp_path / "storage")
    plan_id, keys = cat.register(gz, 1000)
    plan = cat.load_plan(plan_id)
    copy = Path(plan.path)
    assert copy.parent == (tmp_path / "storage" / "inputs").resolve()
    assert copy.read_bytes() == small_input.read_bytes()
    mtime = copy.stat().st_mtime_ns
    assert cat.register(gz, 1000) == (plan_id, keys) and copy.stat().st_mtime_ns == mtime
    plain = Catalog(tmp_path / "storage2").register(small_input, 1000)[1]
    assert len(keys) == len(plain)


def test_truncated_gzip_is_one_clear_error(tmp_path, small_input):
    gz = _gz(small_input, tmp_path / "in.csv.gz")
    gz.write_bytes(gz.read_bytes()[:2000])
    with pytest.raises(InputError, match=r"not a complete gzip file.*gunzip -k"):
        Catalog(tmp_path / "s").register(gz, 1000)
    assert not list((tmp_path / "s" / "inputs").glob("*.csv"))  # no half copy


def test_planning_a_gzip_directly_says_how(tmp_path, small_input):
    gz = _gz(small_input, tmp_path / "in.csv.gz")
    with pytest.raises(InputError, match="gzip-compressed.*gunzip -k"):
        plan_batches(gz)


@pytest.mark.slow
def test_cli_runs_a_gzip_input(tmp_path, small_input):
    gz = _gz(small_input, tmp_path / "userdays.csv.gz")
    env = {**os.environ}
    env.pop("DAGSTER_HOME", None)
    out = tmp_path / "out"
    res = subprocess.run([*HOMELOC, "run", "--input", str(gz),
                          "--out", str(out), "--no-figures", "--quiet"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "summary.json").read_text())["users"] == 3000
