"""The storage and output layout: one owner for every path, the same paths as always."""

import os
import subprocess
import sys
import time
from pathlib import Path

from homeloc_assets.atomic import remove_dead_staged, staged_path
from homeloc_assets.layout import Layout, OutputLayout, table_file
from homeloc_assets.settings import Settings


def test_storage_paths_are_the_ones_on_disk(tmp_path):
    s = Layout(tmp_path)
    want = {
        s.table("countries"): "assets/countries.parquet",
        s.table("user_locations", "p-00001"): "assets/user_locations/p-00001.parquet",
        s.table("x", "p-00001", "csv"): "assets/x/p-00001.csv",
        s.classification: "assets/user_classification.parquet",
        s.countries: "assets/countries.parquet",
        s.countries_source: "assets/countries.source.json",
        s.stats_file("p-00001"): "batch_stats/p-00001.json",
        s.users_file("p-00001"): "batch_stats/p-00001.users.parquet",
        s.lease_file("p-00001"): "batch_stats/.locks/p-00001.lease",
        s.landscape_cache_file("p-00001", "cells", "ab"): "batch_stats/landscape/p-00001.cells.ab.parquet",
        s.country_lookup_file("0123"): "lookup/countries-0123.npz",
        s.layer_lookup_file("states", "0123"): "lookup/layer-states-0123.npz",
        s.plan_file("p"): "plans/p.json",
        s.inputs: "inputs",
        s.dataset_file: "dataset.json",
        s.dagster_home: "dagster_home",
    }
    assert {p.relative_to(tmp_path).as_posix(): v for p, v in want.items()} == {
        v: v for v in want.values()}
    assert table_file(tmp_path / "t", "a") == tmp_path / "t" / "a.parquet"


def test_landscape_cache_globs_match_one_batch_only(tmp_path):
    s = Layout(tmp_path)
    s.landscape_cache.mkdir(parents=True)
    mine = s.landscape_cache_file("k-00001", "cells", "t")
    other = s.landscape_cache_file("k-000010", "cells", "t")
    tmp = s.landscape_cache / f".{mine.name}.xyz.tmp"
    for p in (mine, other, tmp, s.landscape_cache / f".{other.name}.xyz.tmp"):
        p.write_bytes(b"")
    assert list(s.landscape_cache_files("k-00001")) == [mine]
    assert list(s.landscape_cache_temporaries("k-00001")) == [tmp]


def test_output_paths(tmp_path):
    o = OutputLayout(tmp_path)
    gen = "20260101T000000000000-0123abcd"
    assert o.generation(gen) == tmp_path / "generations" / gen
    assert (o.current, o.summary, o.figures, o.analysis, o.stopped_rejects) == (
        tmp_path / "current", tmp_path / "summary.json", tmp_path / "figures",
        tmp_path / "analysis", tmp_path / "stopped_run" / "rejected_rows.csv")


def test_settings_derive_their_paths_from_the_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    s = Settings(output_dir=str(tmp_path / "out"))
    assert s.layout == Layout(tmp_path / "out" / ".homeloc", tmp_path / "xdg" / "homeloc")
    assert s.layout.lookup == tmp_path / "xdg" / "homeloc" / "lookup"
    assert s.layout.figure_cache == tmp_path / "xdg" / "homeloc" / "figures"
    own = Settings(cache_dir=str(tmp_path / "c")).layout
    assert (own.lookup, own.figure_cache) == (tmp_path / "c" / "lookup", tmp_path / "c" / "figures")
    # without a shared folder (the batch workers' view) the caches stay in the storage folder
    assert Layout(tmp_path).lookup == tmp_path / "lookup" and Layout(tmp_path).figure_cache is None
    assert s.tables_path == s.layout.assets and s.stats_path == s.layout.batch_stats
    assert s.output_layout == OutputLayout(tmp_path / "out")
    assert Settings(storage_dir=str(tmp_path / "st")).layout.root == tmp_path / "st"


def test_layout_imports_no_dagster():
    code = ("import sys, homeloc_assets.layout, homeloc_assets.settings, "
            "homeloc_assets.batch_runner; print('dagster' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    assert out.stdout.strip() == "False"


def test_staged_files_of_dead_writers_go_and_live_ones_stay(tmp_path):
    live = staged_path(tmp_path, "k-00001")
    assert live.name.startswith(".k-00001.") and live.name.endswith(".staged")
    assert f"-{os.getpid()}-" in live.name
    dead_proc = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_proc.wait()
    dead = tmp_path / live.name.replace(f"-{os.getpid()}-", f"-{dead_proc.pid}-")
    other_key = staged_path(tmp_path, "k-00002")
    # another machine's (or an older homeloc's) names: by their age only
    foreign_new = tmp_path / ".k-00001.ffffffff-1-2.staged"
    legacy_old = tmp_path / ".k-00001.12345.staged"
    for p in (live, dead, other_key, foreign_new, legacy_old):
        p.write_bytes(b"x")
    gone = remove_dead_staged(tmp_path, "k-00001")
    assert gone == [dead]
    assert sorted(remove_dead_staged(tmp_path, "k-00001", timeout=-1)) == sorted(
        [foreign_new, legacy_old])
    assert live.exists() and other_key.exists()


def test_a_staged_hard_link_to_an_old_file_is_not_old(tmp_path):
    cache = tmp_path / "cache.parquet"
    cache.write_bytes(b"x")
    os.utime(cache, (time.time() - 86400, time.time() - 86400))
    link = tmp_path / ".k-00001.ffffffff-1-2.staged"  # another machine's, linked just now
    os.link(cache, link)
    assert remove_dead_staged(tmp_path, "k-00001") == []
    assert link.exists()
