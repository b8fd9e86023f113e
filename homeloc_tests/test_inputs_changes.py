"""Changed input detected at batch reading; the file's hll params fixed at planning.

A batch read checks the planned size, mtime and fingerprint on the file it
has open (before and after reading), so a file replaced or appended to during
a run stops the run (InputError, exit 2) instead of mixing two versions or
leaving rows out. Rows whose hll params differ from the file's (its first
valid hll, found at planning) are rejected the same whatever the batch size.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from homeloc_assets.catalog import Catalog
from homeloc_assets.inputs import InputError, plan_batches, read_batch
from homeloc_tests.helpers import H1, H2, H_OTHER_PARAMS, HOMELOC, write


def _expect(plan):
    return plan.size, plan.mtime_ns, plan.fingerprint


def _lines(n_users: int) -> list[str]:
    return [f"u{i:04d},{i % 50},{i % 90},{H1 if i % 2 else H2}" for i in range(n_users) for _ in (0, 1)]


def test_unchanged_file_reads(tmp_path):
    path = write(tmp_path, _lines(20))
    plan = plan_batches(path, 5)
    rows = sum(read_batch(path, b.start, b.end, expect=_expect(plan)).rows.num_rows
               for b in plan.batches)
    assert rows == 40


def test_appended_rows_stop_the_read(tmp_path):
    path = write(tmp_path, _lines(20))
    plan = plan_batches(path, 5)
    b = plan.batches[0]
    with open(path, "a") as fh:
        fh.write(f"zzz,1,1,{H1}\n")
    with pytest.raises(InputError, match=r"changed during the run \(grew"):
        read_batch(path, b.start, b.end, expect=_expect(plan))


def test_replaced_file_same_size_stops_the_read(tmp_path):
    path = write(tmp_path, _lines(20))
    plan = plan_batches(path, 5)
    text = Path(path).read_text().replace("u0019", "v0019")  # same size, other users at the end
    tmp = tmp_path / "new.csv"
    tmp.write_text(text)
    os.utime(tmp, ns=(plan.mtime_ns, plan.mtime_ns))  # even with the planned mtime
    os.replace(tmp, path)
    assert os.stat(path).st_size == plan.size
    with pytest.raises(InputError, match="changed during the run"):
        read_batch(path, plan.batches[-1].start, plan.batches[-1].end, expect=_expect(plan))


def test_catalog_batches_carry_the_identity(tmp_path):
    path = write(tmp_path, _lines(20))
    cat = Catalog(tmp_path / "storage")
    plan_id, keys = cat.register(path, 5)
    ref = Catalog(tmp_path / "storage").batch(keys[1])  # read back from the stored plan
    plan = plan_batches(path, 5)
    assert ref.expect == _expect(plan) and ref.hll_params == plan.hll_params != None  # noqa: E711


@pytest.mark.parametrize("first", [H1, H_OTHER_PARAMS])
def test_params_verdict_independent_of_batch_size(tmp_path, first):
    """The file's params are its first valid hll's; every batch size gives the same rejects."""
    lines = [f"a,1,1,{first}", f"b,1,1,{H_OTHER_PARAMS}", f"b,1,1,{H1}", f"c,1,1,{H1}",
             f"d,1,1,{H_OTHER_PARAMS}", f"d,1,1,{H_OTHER_PARAMS}", f"e,1,1,{H2}"]
    path = write(tmp_path, lines)
    other = first == H_OTHER_PARAMS
    want = [4, 5, 8] if other else [3, 6, 7]  # global lines: the header is line 1
    for size in (1, 2, 3, 10**6):
        plan = plan_batches(path, size)
        got = []
        for b in plan.batches:
            r = read_batch(path, b.start, b.end, expect=_expect(plan), hll_params=plan.hll_params)
            base = Path(path).read_bytes()[: b.start].count(b"\n")
            got += [base + ln for ln in r.rejects.column("line").to_pylist()]
        assert got == want, (size, got)


@pytest.mark.slow
def test_grown_file_stops_the_batch_and_a_rerun_takes_the_new_rows(tmp_path, small_input):
    """The batch step finds the file grown since planning; ``homeloc run`` again re-plans
    and counts the appended user (rows appended are never silently left out)."""
    import json
    import shutil

    from homeloc_assets.inference.batch import process_batch

    path = tmp_path / "in.csv"
    shutil.copy(small_input, path)
    out = tmp_path / "out"
    cat = Catalog(out / ".homeloc")
    _, keys = cat.register(path, 1000)
    ref = cat.batch(keys[0])
    row = Path(small_input).read_text().splitlines()[1].split(",", 1)[1]
    with open(path, "a") as fh:
        fh.write(f"zz-appended-user,{row}\n")
    with pytest.raises(InputError, match="changed during the run"):
        process_batch(ref.path, ref.start, ref.end, [], [], None, None, expect=ref.expect)
    env = {**os.environ}
    env.pop("DAGSTER_HOME", None)
    res = subprocess.run([*HOMELOC, "run", "--input", str(path),
                          "--out", str(out), "--no-figures", "--batch-users", "1000",
                          "--workers", "1", "--quiet"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "summary.json").read_text())["users"] == 3001
