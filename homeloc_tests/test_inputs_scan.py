"""The reader's compiled line scan (``inputs/_scan.c``) against its numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from homeloc_assets.inputs import reader

_PIECES = [b"a", b"1", b",", b"\n", b"\r", b"\r\n", b"\xc3\xa9", b"\xff", b" ", b"\\x13"]


def _compiled(data: bytes):
    assert reader._SCAN is not None, "homeloc_assets/inputs/_scan.c was not built: run `make setup`"
    return reader._scan_lines(data)


def _same(data: bytes) -> None:
    buf = np.frombuffer(data, np.uint8)
    got, ref = _compiled(data), reader._scan_lines_numpy(buf)
    names = ("starts", "ends", "raw_end", "commas", "flags")
    for name, a, b in zip(names, got, ref, strict=True):
        assert np.array_equal(a, b), (name, data, a, b)
        assert a.dtype == b.dtype, name


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=60))
def test_compiled_scan_equals_the_reference(pieces):
    _same(b"".join(pieces))


@pytest.mark.parametrize("data", [
    b"", b"\n", b"\n\n", b"\r", b"\r\n", b"a,b\r\r\n", b"a\rb,c\n", b"x,y", b"x,y\n",
    "ü,1\n\n,,\n".encode(), b"a,b\nc\xff,d",
])
def test_edges(data):
    _same(data)


def test_a_real_shaped_batch():
    """Lines of the seed's shape with CRLF endings, a blank line and a bad byte."""
    line = b"+++L5wQWIE+/B+a7XPgyDrxU+8B0EdcLAhTH6I/Az9s,50.15,8.85,\\x138b407ec4a561\r\n"
    data = line * 500 + b"\r\n" + line.replace(b"8.85", b"8.8\xe9") + line * 3
    _same(data)
    starts, ends, raw_end, commas, flags = _compiled(data)
    assert len(starts) == 505 and set(commas.tolist()) == {0, 3}
    assert np.flatnonzero(flags).tolist() == [501]


def test_short_lines_past_the_first_guess_are_counted():
    """Lines shorter than the first guess of the line count (blank lines, one-byte lines)."""
    _same(b"\n" * 5000 + b"a,b\n" + b"x\n" * 3000)


def test_too_small_outputs_say_so():
    small = [np.empty(1, np.int64) for _ in range(3)] + [np.empty(1, np.int32), np.empty(1, np.uint8)]
    assert reader._SCAN.scan_lines(np.frombuffer(b"a\nb\n", np.uint8), *small) == -1


def test_extensions_load_only_at_their_interface_version():
    """One loader for both extensions: built and current, it is used; out of date, a warning
    and the numpy path; not built, the numpy path."""
    from homeloc_assets.native import load_extension

    assert load_extension("homeloc_assets.inputs._scan", 2) is reader._SCAN
    with pytest.warns(UserWarning, match="out of date"):
        assert load_extension("homeloc_assets.inputs._scan", 999) is None
    assert load_extension("homeloc_assets.inputs._no_such_extension", 1) is None
