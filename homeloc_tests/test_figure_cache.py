"""The figure cache: a figure is reused only for the same drawing code and the same inputs."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from homeloc_assets import figure_cache as fc
from homeloc_assets import plots

CALLS: list[int] = []


def _bar(counts: dict, title: str, series: pd.Series):
    CALLS.append(1)
    return plots.classification_bar(counts, title + str(int(series.sum())))


def _files(out, name="bar"):
    return {fmt: (out / f"{name}.{fmt}").read_bytes() for fmt in ("png", "svg")}


@pytest.fixture(autouse=True)
def _calls():
    CALLS.clear()


ARGS = ({"Local": 3, "Tourist": 2, "undetermined": 1}, "Germany", pd.Series([1, 2, 3]))


def test_same_inputs_are_copied_not_drawn(tmp_path):
    cache = tmp_path / "cache"
    first, hit1 = fc.cached_figure_files(_bar, ARGS, name="bar", out_dir=tmp_path / "a",
                                         cache_dir=cache)
    second, hit2 = fc.cached_figure_files(_bar, ARGS, name="bar", out_dir=tmp_path / "b",
                                          cache_dir=cache)
    assert (hit1, hit2) == (False, True) and len(CALLS) == 1
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    # the drawn files are what plots.save_figure writes for the same figure
    plots.save_figure(_bar(*ARGS), tmp_path / "c", "bar")
    assert _files(tmp_path / "c") == _files(tmp_path / "a")


@pytest.mark.parametrize("change", [
    lambda a: ({**a[0], "Local": 4}, a[1], a[2]),
    lambda a: (a[0], "France", a[2]),
    lambda a: (a[0], a[1], pd.Series([1, 2, 4])),
    lambda a: (a[0], a[1], pd.Series([1, 2, 3], index=[0, 1, 5])),
])
def test_any_changed_input_draws_again(tmp_path, change):
    cache = tmp_path / "cache"
    fc.cached_figure_files(_bar, ARGS, name="bar", out_dir=tmp_path / "a", cache_dir=cache)
    _, hit = fc.cached_figure_files(_bar, change(ARGS), name="bar", out_dir=tmp_path / "b",
                                    cache_dir=cache)
    assert not hit and len(CALLS) == 2


def test_another_name_or_function_is_another_entry(tmp_path):
    cache = tmp_path / "cache"
    fc.cached_figure_files(_bar, ARGS, name="bar", out_dir=tmp_path, cache_dir=cache)
    _, hit = fc.cached_figure_files(_bar, ARGS, name="bar2", out_dir=tmp_path, cache_dir=cache)
    assert not hit

    def other(counts, title, series):
        CALLS.append(2)
        return plots.classification_bar(counts, title)

    _, hit = fc.cached_figure_files(other, ARGS, name="bar", out_dir=tmp_path, cache_dir=cache)
    assert not hit and CALLS == [1, 1, 2]


def test_a_damaged_entry_is_drawn_again(tmp_path):
    cache = tmp_path / "cache"
    fc.cached_figure_files(_bar, ARGS, name="bar", out_dir=tmp_path / "a", cache_dir=cache)
    [png] = cache.glob("*/*/bar.png")
    png.write_bytes(png.read_bytes()[:-10])
    _, hit = fc.cached_figure_files(_bar, ARGS, name="bar", out_dir=tmp_path / "b",
                                    cache_dir=cache)
    assert not hit and _files(tmp_path / "a") == _files(tmp_path / "b")


def test_unknown_arguments_and_no_cache_always_draw(tmp_path):
    class Opaque:
        pass

    def draw(obj):
        CALLS.append(1)
        return plots.classification_bar({"Local": 1}, "x")

    for _ in range(2):
        _, hit = fc.cached_figure_files(draw, (Opaque(),), name="o", out_dir=tmp_path,
                                        cache_dir=tmp_path / "cache")
        assert not hit
        _, hit = fc.cached_figure_files(draw, (1,), name="n", out_dir=tmp_path, cache_dir=None)
        assert not hit
    assert len(CALLS) == 4 and not list((tmp_path / "cache").glob("*/*"))


def test_an_unwritable_cache_still_gives_the_figure(tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    paths, hit = fc.cached_figure_files(_bar, ARGS, name="bar", out_dir=tmp_path / "a",
                                        cache_dir=blocker)
    assert not hit and paths["png"].stat().st_size > 0


def test_the_cache_keeps_the_most_recently_used(tmp_path, monkeypatch):
    monkeypatch.setattr(fc, "MAX_ENTRIES", 2)
    cache = tmp_path / "cache"
    for title in ("a", "b", "c"):
        fc.cached_figure_files(_bar, (ARGS[0], title, ARGS[2]), name="bar", out_dir=tmp_path,
                               cache_dir=cache)
    assert len(list(cache.glob("*/*/meta.json"))) == 2
    _, hit = fc.cached_figure_files(_bar, (ARGS[0], "a", ARGS[2]), name="bar", out_dir=tmp_path,
                                    cache_dir=cache)
    assert not hit  # the oldest went


def test_digest_tells_contents_apart():
    def d(x):
        return fc.digest(x).hexdigest()

    t = pa.table({"cell": ["a", "b"], "v": [1.0, None]})
    assert d(t) == d(pa.table({"cell": ["a", "b"], "v": [1.0, None]}))
    assert d(t) != d(pa.table({"cell": ["a", "b"], "v": [1.0, 2.0]}))
    assert d(pd.DataFrame({"a": [1]})) != d(pd.DataFrame({"b": [1]}))
    assert d((1, "1")) != d(("1", 1)) and d([1.0]) != d([1])
    assert d(lambda v: f"{v}%") != d(lambda v: f"{v} %")


MADE: list[bytes] = []


def _shout(path):
    data = path.read_bytes()
    MADE.append(data)
    return data.upper()


def _whisper(path):
    MADE.append(b"w")
    return path.read_bytes().lower()


def test_derived_bytes_are_made_once_per_source_content(tmp_path):
    """The figure's UI copy (cached_derived): made once per source content and maker."""
    MADE.clear()
    cache = tmp_path / "cache"
    src = tmp_path / "a.png"
    src.write_bytes(b"abc")
    assert fc.cached_derived(_shout, src, cache) == b"ABC"
    assert fc.cached_derived(_shout, src, cache) == b"ABC" and len(MADE) == 1
    src.write_bytes(b"abd")  # same path, other bytes: made again
    assert fc.cached_derived(_shout, src, cache) == b"ABD" and len(MADE) == 2
    assert fc.cached_derived(_whisper, src, cache) == b"abd" and len(MADE) == 3  # other maker
    other = tmp_path / "b.png"  # other path, same bytes: reused
    other.write_bytes(b"abd")
    assert fc.cached_derived(_shout, other, cache) == b"ABD" and len(MADE) == 3
    # a damaged entry is made again, never served
    for data in (cache / "derived").glob("*/*/data"):
        data.write_bytes(b"XXX")
    assert fc.cached_derived(_shout, other, cache) == b"ABD" and len(MADE) == 4
    assert fc.cached_derived(_shout, other, None) == b"ABD" and len(MADE) == 5


def test_derived_cache_keeps_the_newest_entries(tmp_path, monkeypatch):
    monkeypatch.setattr(fc, "MAX_ENTRIES", 3)
    cache = tmp_path / "cache"
    for i in range(6):
        src = tmp_path / f"{i}.png"
        src.write_bytes(str(i).encode())
        fc.cached_derived(_shout, src, cache)
    assert len(list((cache / "derived").glob("*/*/meta.json"))) == 3


def test_derived_bytes_are_made_again_when_a_dependency_changes(tmp_path, monkeypatch):
    """A module named in ``depends`` (what the maker calls) is part of the key: its version."""
    import PIL

    MADE.clear()
    src = tmp_path / "a.png"
    src.write_bytes(b"abc")
    cache = tmp_path / "cache"
    fc.cached_derived(_shout, src, cache, ("PIL",))
    fc.cached_derived(_shout, src, cache, ("PIL",))
    assert len(MADE) == 1
    monkeypatch.setattr(PIL, "__version__", "0.0-other")
    assert fc.cached_derived(_shout, src, cache, ("PIL",)) == b"ABC" and len(MADE) == 2
    # a dependency that cannot be imported: made every time, never an error
    assert fc.cached_derived(_shout, src, cache, ("no_such_module_x",)) == b"ABC"
    assert len(MADE) == 3
