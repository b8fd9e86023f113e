"""Published as one set, one run one result.

The core (``publish``) on folders made here; then ``homeloc run``: a failing
later step and a kill -9 publish nothing new and leave the previous set intact;
with a persistent Dagster home a second input's exports describe that input only.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from homeloc_assets import publish as pub
from homeloc_tests.helpers import HOMELOC, env_for, homeloc


def make_generation(out: Path, files: dict[str, str]) -> str:
    gen = pub.new_generation_id()
    folder = pub.generation_dir(out, gen)
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return gen


# ---------------------------------------------------------------------------- core
def test_publish_switches_every_name_at_once_and_keeps_one_previous_set(tmp_path):
    out = tmp_path / "out"
    g1 = make_generation(out, {"a.csv": "1", "b.json": "1", "figures/x.png": "1"})
    pub.publish(out, g1, required=("a.csv",))
    assert (out / "a.csv").read_text() == "1" and (out / "figures" / "x.png").read_text() == "1"
    assert pub.current_generation(out) == g1 and pub.verify(out) == []
    manifest = json.loads((out / pub.MANIFEST).read_text())["files"]
    assert sorted(manifest) == ["a.csv", "b.json", "figures/x.png"]

    g2 = make_generation(out, {"a.csv": "2", "figures/x.png": "2", "c.txt": "2"})
    pub.publish(out, g2)
    assert [(out / n).read_text() for n in ("a.csv", "figures/x.png", "c.txt")] == ["2"] * 3
    assert not (out / "b.json").exists() and not (out / "b.json").is_symlink()  # gone with g1's set
    g3 = make_generation(out, {"a.csv": "3"})
    pub.publish(out, g3)
    left = sorted(p.name for p in (out / pub.GENERATIONS_DIR).iterdir())
    assert left == sorted([g2, g3])  # the previous set stays for readers still in it


def test_an_incomplete_set_publishes_nothing(tmp_path):
    out = tmp_path / "out"
    g1 = make_generation(out, {"a.csv": "1", "summary.json": "{}"})
    pub.publish(out, g1, required=("a.csv", "summary.json"))
    g2 = make_generation(out, {"a.csv": "2"})
    with pytest.raises(pub.IncompleteSetError, match="summary.json"):
        pub.publish(out, g2, required=("a.csv", "summary.json"))
    assert pub.current_generation(out) == g1 and (out / "a.csv").read_text() == "1"


def test_verify_names_a_file_changed_after_publication(tmp_path):
    out = tmp_path / "out"
    pub.publish(out, make_generation(out, {"a.csv": "1", "b.csv": "1"}))
    (out / "current" / "a.csv").write_text("tampered")
    (out / "current" / "b.csv").unlink()
    assert pub.verify(out) == ["b.csv: missing", "a.csv: changed"]


def test_a_folder_of_the_old_layout_is_taken_over(tmp_path):
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "x.png").write_text("old")
    (out / "a.csv").write_text("old")
    (out / "notes.txt").write_text("the user's own")
    pub.publish(out, make_generation(out, {"a.csv": "new", "figures/x.png": "new"}))
    assert (out / "a.csv").is_symlink() and (out / "a.csv").read_text() == "new"
    assert (out / "figures").is_symlink() and (out / "figures" / "x.png").read_text() == "new"
    assert (out / "notes.txt").read_text() == "the user's own"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_a_reader_never_sees_two_sets_mixed(tmp_path):
    """Publisher and reader race; every read of the resolved set is one set."""
    out = tmp_path / "out"
    gens = [make_generation(out, {"a.csv": str(i), "b.csv": str(i)}) for i in range(2)]
    pub.publish(out, gens[0])
    stop, seen, errors = threading.Event(), set(), []

    def reader():
        while not stop.is_set():
            folder = Path(os.path.realpath(out / "current"))
            try:
                pair = ((folder / "a.csv").read_text(), (folder / "b.csv").read_text())
            except FileNotFoundError as exc:  # a set may not vanish while it is current
                errors.append(str(exc))
                continue
            seen.add(pair)

    t = threading.Thread(target=reader)
    t.start()
    for i in range(300):
        pub.publish(out, gens[i % 2])  # only two generations: nothing is ever removed
    stop.set()
    t.join()
    assert not errors and seen <= {("0", "0"), ("1", "1")} and seen


def test_generation_names_sort_by_creation_and_are_checked(tmp_path):
    a = pub.new_generation_id()
    time.sleep(0.002)
    assert pub.new_generation_id() > a
    with pytest.raises(ValueError):
        pub.generation_dir(tmp_path, "../escape")


# ------------------------------------------------------------------ homeloc run
def _published(out: Path) -> tuple[str | None, dict[str, bytes]]:
    """The published generation and its files."""
    gen = pub.current_generation(out)
    folder = out / "current"
    return gen, {p.relative_to(folder).as_posix(): p.read_bytes()
                 for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_a_failing_figure_step_publishes_nothing_new(small_input, tmp_path, monkeypatch, capsys):
    from homeloc_assets import cli, plots

    out = tmp_path / "out"
    monkeypatch.setenv("DAGSTER_HOME", "")  # restored afterwards; the run sets it
    base = ["run", "--input", str(small_input), "--out", str(out), "--workers", "1", "--quiet",
            "--no-landscape"]
    assert cli.main(base) == 0
    before = _published(out)

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(plots, "save_figure", disk_full)
    code = cli.main([*base, "--study-country", "France"])
    assert code == 1
    assert "No space left on device" in capsys.readouterr().err
    assert _published(out) == before and pub.verify(out) == []
    summary = json.loads((out / "summary.json").read_text())
    assert summary["study_country"] == "Germany"


@pytest.mark.slow
@pytest.mark.heavy  # CI time; the reader race and the failing step are in make test
@pytest.mark.parametrize("delay", [0.0, pytest.param(0.3, marks=pytest.mark.heavy),
                                   pytest.param(1.0, marks=pytest.mark.heavy)])
def test_kill_9_after_the_new_exports_leaves_one_complete_set(small_input, tmp_path, delay):
    out = tmp_path / "out"
    homeloc("run", "--input", str(small_input), "--out", str(out), "--workers", "1", "--quiet",
            "--no-figures")
    old_gen, old_files = _published(out)
    env = env_for()
    proc = subprocess.Popen([*HOMELOC, "run", "--input", str(small_input), "--out", str(out),
                             "--workers", "1", "--quiet", "--min-userdays", "3"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            new = [p for p in (out / pub.GENERATIONS_DIR).iterdir()
                   if p.name != old_gen and (p / "summary.json").exists()]
            if new:
                break
            time.sleep(0.01)
        time.sleep(delay)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    gen, files = _published(out)
    assert pub.verify(out) == []  # whichever set is current, it is whole
    if gen == old_gen:
        assert files == old_files
    else:  # the run got through: all of it is the new run's
        assert json.loads(files["summary.json"])["min_userdays"] == 3
    # the same command again publishes the new set
    homeloc("run", "--input", str(small_input), "--out", str(out), "--workers", "1", "--quiet",
            "--min-userdays", "3")
    assert json.loads((out / "summary.json").read_text())["min_userdays"] == 3
    assert pub.verify(out) == []


@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_with_a_persistent_dagster_home_each_run_describes_its_own_input(tmp_path):
    from homeloc_assets.synth import generate

    a, b = tmp_path / "a" / "users.csv", tmp_path / "b" / "users.csv"
    a.parent.mkdir()
    b.parent.mkdir()
    generate(800, a, seed=21)
    generate(600, b, seed=22)
    out, home = tmp_path / "out", tmp_path / "dagster_home"
    common = ["--out", str(out), "--dagster-home", str(home), "--workers", "1", "--quiet",
              "--no-figures", "--no-landscape", "--batch-users", "250"]
    homeloc("run", "--input", str(a), *common)
    homeloc("run", "--input", str(b), *common)
    truth_b = pd.read_csv(f"{b}.truth.csv")
    homes = pd.read_csv(out / "user_home_locations.csv")
    assert sorted(homes.user_guid) == sorted(truth_b.user_guid)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inputs"] == [str(b)] and summary["users"] == 600
    # the first input moved away: later runs are not bothered by its batches
    shutil.move(str(a.parent), str(tmp_path / "elsewhere"))
    c = tmp_path / "c.csv"
    generate(500, c, seed=23)
    homeloc("run", "--input", str(c), *common)
    assert json.loads((out / "summary.json").read_text())["users"] == 500
    homeloc("run", "--input", str(b), *common)
    homes = pd.read_csv(out / "user_home_locations.csv")
    assert sorted(homes.user_guid) == sorted(truth_b.user_guid)


@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_dataset_keys_refuse_part_of_an_input(small_input, tmp_path):
    from homeloc_assets.catalog import Catalog

    catalog = Catalog(tmp_path / "storage")
    plan_id, keys = catalog.register(small_input, 1000)
    other = ["other_file-0000abcd-00000"]
    assert catalog.dataset_keys(keys + other, [plan_id]) == keys
    assert catalog.dataset_keys(keys + other, None) == keys + other
    with pytest.raises(KeyError, match=keys[-1]):
        catalog.dataset_keys(keys[:-1], [plan_id])
    assert catalog.dataset() is None
    catalog.set_dataset([plan_id], source="test")
    assert catalog.dataset() == [plan_id] and catalog.dataset_source() == "test"


@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_on_the_platform_an_incomplete_set_waits_and_keeps_the_previous_one(small_input, tmp_path):
    """The automation may run homeloc_published before the landscape: it publishes nothing."""
    import dagster as dg

    from homeloc_assets.catalog import Catalog
    from homeloc_assets.definitions import build_definitions
    from homeloc_assets.settings import Settings

    out = tmp_path / "out"
    homeloc("run", "--input", str(small_input), "--out", str(out), "--workers", "1", "--quiet",
            "--no-landscape", "--no-figures")
    before = _published(out)
    settings = Settings(input_dir=str(small_input.parent), output_dir=str(out), workers=1)
    defs = build_definitions(settings)
    instance = dg.DagsterInstance.ephemeral()
    _, keys = Catalog(settings.storage_path).register(small_input, settings.batch_users)
    instance.add_dynamic_partitions("user_batches", keys)
    res = dg.materialize(defs.assets, selection=["user_classification", "homeloc_exports",
                                                 "homeloc_published"],
                         instance=instance, resources=defs.resources)
    assert res.success
    meta = [e.materialization.metadata for e in res.get_asset_materialization_events()
            if e.asset_key.to_user_string() == "homeloc_published"][0]
    assert meta["published"].value is False
    assert "landscape_cells.parquet" in meta["waiting_for"].value
    assert _published(out) == before and pub.verify(out) == []
