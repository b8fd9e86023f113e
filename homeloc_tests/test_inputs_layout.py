"""Columns found by name in the header: any case, any order, other columns ignored."""

from __future__ import annotations

import pandas as pd
import pytest

from homeloc_assets.inputs import InputError, plan_batches, read_batch
from homeloc_assets.inputs.plan import read_layout
from homeloc_tests.helpers import H1, H2, H_OTHER_PARAMS


def _read(path, batch_users):
    plan = plan_batches(path, batch_users)
    out = [read_batch(path, b.start, b.end, expect=(plan.size, plan.mtime_ns, plan.fingerprint),
                      hll_params=plan.hll_params) for b in plan.batches]
    return plan, out


def _frame() -> pd.DataFrame:
    rows = [("a", 1.5, 2.5, H1), ("a", 3.0, 4.0, H2), ("b", 5.0, 6.0, H1),
            ("c", 7.0, 8.0, H_OTHER_PARAMS), ("c", 9.0, 10.0, H2)]
    return pd.DataFrame(rows, columns=["user_guid", "latitude", "longitude", "userday_hll"])


@pytest.mark.parametrize("shape", ["pandas_index", "reordered_extra", "upper_case"])
def test_columns_by_name(tmp_path, shape):
    df = _frame()
    path = tmp_path / f"{shape}.csv"
    if shape == "pandas_index":  # df.to_csv(path) without index=False: a nameless first column
        df.to_csv(path)
    elif shape == "reordered_extra":
        df.assign(note="x", n=range(len(df)))[
            ["note", "userday_hll", "longitude", "n", "latitude", "user_guid"]].to_csv(path, index=False)
    else:
        df.rename(columns=str.upper).to_csv(path, index=False)
    assert read_layout(path)[1].fields == {"pandas_index": 5, "reordered_extra": 6}.get(shape, 4)
    for bu in (1, 2, 10**6):
        plan, res = _read(path, bu)
        rows = pd.concat([r.rows.to_pandas() for r in res])
        assert rows.user_guid.tolist() == ["a", "a", "b", "c"], (shape, bu)
        assert rows.latitude.tolist() == [1.5, 3.0, 5.0, 9.0]
        assert rows.longitude.tolist() == [2.5, 4.0, 6.0, 10.0]
        rej = [r for x in res for r in x.rejects.to_pylist()]
        assert len(rej) == 1 and "differ from the file's" in rej[0]["reason"]
        users = [set(r.rows.column("user_guid").to_pylist()) for r in res]
        assert sum(map(len, users)) == len(set().union(*users))  # cut only at user changes
        if bu == 1:
            assert len(plan.batches) >= 2


def test_missing_and_twice_named_columns(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text(f"user_guid,lat,longitude,userday_hll\na,1,1,{H1}\n")
    with pytest.raises(InputError, match=r"missing column\(s\) latitude;.*any order"):
        plan_batches(p)
    p.write_text(f"user_guid,latitude,longitude,userday_hll,LATITUDE\na,1,1,{H1},2\n")
    with pytest.raises(InputError, match="named twice"):
        plan_batches(p)


def test_split_user_found_with_reordered_columns(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("userday_hll,user_guid,latitude,longitude\n"
                 f"{H1},a,1,1\n{H1},b,1,1\n{H2},a,2,2\n")
    with pytest.raises(InputError, match="user 'a' are not together: line 2 and line 4"):
        _read(p, 10**6)
