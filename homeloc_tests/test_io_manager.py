"""The table IO manager: Parquet and CSV, partitions, atomic writes, lazy multi-partition loads."""

import os

import dagster as dg
import pandas as pd
import pyarrow as pa
import pytest

from homeloc_assets.atomic import atomic_path
from homeloc_assets.defs.io_managers import HomelocIOManager
from homeloc_assets.tables import PartitionedTables

parts = dg.StaticPartitionsDefinition(["a", "b", "c"])


@dg.asset(partitions_def=parts)
def numbers(context: dg.AssetExecutionContext) -> pa.Table:
    k = context.partition_key
    return pa.table({"k": [k] * 3, "v": [1, 2, 3]})


@dg.asset(metadata={"format": "csv"})
def total(numbers: PartitionedTables) -> pd.DataFrame:
    assert isinstance(numbers, PartitionedTables) and numbers.keys() == ["a", "b", "c"]
    t = numbers.read_all()
    return pd.DataFrame({"n": [t.num_rows], "sum": [sum(t.column("v").to_pylist())]})


@dg.asset(partitions_def=parts)
def doubled(numbers: pa.Table) -> pa.Table:
    return pa.table({"v": [2 * x for x in numbers.column("v").to_pylist()]})


def test_partitions_parquet_and_csv(tmp_path):
    io = HomelocIOManager(base_dir=str(tmp_path))
    inst = dg.DagsterInstance.ephemeral()
    for k in ["a", "b", "c"]:
        assert dg.materialize([numbers, doubled], partition_key=k, resources={"io_manager": io},
                              instance=inst).success
    assert sorted(p.name for p in (tmp_path / "numbers").iterdir()) == [
        "a.parquet", "b.parquet", "c.parquet"]
    res = dg.materialize([numbers, total], selection=["total"], resources={"io_manager": io},
                         instance=inst)
    assert res.success
    csv = (tmp_path / "total.csv").read_text().splitlines()
    assert csv == ["n,sum", "9,18"]
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no temp files left


def test_missing_partition_is_a_clear_error(tmp_path):
    io = HomelocIOManager(base_dir=str(tmp_path))
    inst = dg.DagsterInstance.ephemeral()
    dg.materialize([numbers], partition_key="a", resources={"io_manager": io}, instance=inst)
    res = dg.materialize([numbers, total], selection=["total"], resources={"io_manager": io},
                         instance=inst, raise_on_error=False)
    assert not res.success
    err = res.get_step_failure_events()[0].step_failure_data.error
    text = err.message + "".join(c.message for c in [err.cause] if c)
    assert "not materialized" in text


def test_atomic_path_leaves_target_untouched_on_error(tmp_path):
    target = tmp_path / "x.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["x.csv"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["x.csv"]


def test_a_geo_table_is_read_once_per_version_and_each_step_gets_its_own_copy(tmp_path):
    import geopandas as gpd
    from shapely.geometry import Point

    from homeloc_assets.defs import io_managers

    seen = []

    @dg.asset
    def regions() -> gpd.GeoDataFrame:
        return gpd.GeoDataFrame({"name": ["a"]}, geometry=[Point(0, 0)], crs="EPSG:4326")

    @dg.asset
    def first(regions: gpd.GeoDataFrame) -> pa.Table:
        seen.append(list(regions["name"]))
        regions["name"] = ["changed by a step"]
        return pa.table({"n": [len(regions)]})

    @dg.asset
    def second(regions: gpd.GeoDataFrame) -> pa.Table:
        seen.append(list(regions["name"]))
        return pa.table({"n": [len(regions)]})

    io = HomelocIOManager(base_dir=str(tmp_path))
    inst = dg.DagsterInstance.ephemeral()
    assert dg.materialize([regions, first, second], resources={"io_manager": io},
                          instance=inst).success
    assert seen == [["a"], ["a"]]  # the first step's change did not reach the second
    gpd.GeoDataFrame({"name": ["b"]}, geometry=[Point(1, 1)], crs="EPSG:4326").to_parquet(
        tmp_path / "regions.parquet")
    assert dg.materialize([regions, first, second], selection=["second"],
                          resources={"io_manager": io}, instance=inst).success
    assert seen[-1] == ["b"]  # a rewritten file is read again
    assert len([v for v in io_managers._GEO_READ if v[0] == str(tmp_path / "regions.parquet")]) == 1


def test_map_ahead_keeps_order_holds_two_and_passes_errors(tmp_path):
    """PartitionedTables.map_ahead: results in partition order, at most one computed ahead
    of the one in use, and an error of a partition reaches the caller."""
    import threading

    from homeloc_assets.tables import write_table

    files = {}
    for i in range(6):
        files[f"b{i}"] = write_table(pa.table({"x": [i, i]}), tmp_path / f"b{i}.parquet")
    parts = PartitionedTables(files)
    started, lock = [], threading.Lock()

    def f(key, t):
        with lock:
            started.append(key)
        if key == "b4" and fail:
            raise ValueError("bad b4")
        return key, t.column("x")[0].as_py()

    fail = False
    got = []
    for item in parts.map_ahead(f):
        got.append(item)
        assert len(started) <= len(got) + 1  # never more than one ahead
    assert got == [(f"b{i}", i) for i in range(6)]
    fail, started[:] = True, []
    with pytest.raises(ValueError, match="bad b4"):
        list(parts.map_ahead(f))
    assert list(PartitionedTables({}).map_ahead(f)) == []
