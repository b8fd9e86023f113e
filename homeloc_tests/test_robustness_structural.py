"""Issue 5, robustness: structural damage stops ``homeloc run`` with one clear line and no exports.

Missing or misnamed column (the message names it), a user whose rows are not
together (the message names two physical lines), an empty file, a header-only
file, a binary file: exit code non-zero, exactly one ``homeloc: error:`` line,
and no export file at all in ``--out``.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from homeloc_tests.helpers import (
    EXPORTS,
    HEADER,
    base_rows,
    export_files,
    homeloc,
    one_error_line,
    run_args,
    write_lines,
)


@pytest.fixture(scope="module")
def lines(tmp_path_factory):
    _, lines = base_rows(200, 31, tmp_path_factory.mktemp("structural"))
    return lines


def _fails_cleanly(src, out, *extra) -> str:
    res = homeloc(*run_args(src, out, *extra), check=False)
    assert res.returncode != 0, res.stdout
    msg = one_error_line(res)
    assert not export_files(out), sorted(export_files(out))
    assert not any((out / n).exists() for n in EXPORTS)
    return msg


@pytest.mark.parametrize(
    "header, words",
    [
        (b"user_guid,latitude,userday_hll", ["missing", "longitude"]),
        (b"user_guid,lat,longitude,userday_hll", ["missing", "latitude", "lat"]),
        (b"user,latitude,longitude,userday_hll", ["missing", "user_guid"]),
        (b"user_guid,latitude,longitude,userday_hll,LATITUDE", ["named twice", "latitude"]),
    ],
)
@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_missing_or_misnamed_column_is_named(lines, tmp_path, header, words):
    src = write_lines(tmp_path / "in.csv", lines[:50], header=header)
    msg = _fails_cleanly(src, tmp_path / "out")
    assert all(w in msg for w in words), msg


@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_columns_found_by_name_give_the_same_homes(lines, tmp_path):
    """Extra columns (a pandas index, a trailing note), any order and case: the same homes."""
    plain = write_lines(tmp_path / "plain.csv", lines)
    homeloc(*run_args(plain, tmp_path / "plain", "--no-figures"))
    fields = [ln.split(b",") for ln in lines]
    shaped = [b",".join([str(i).encode(), f[0], f[2], f[1], f[3], b"note"]) for i, f in enumerate(fields)]
    src = write_lines(tmp_path / "shaped.csv", shaped,
                      header=b",USER_GUID,Longitude,latitude,userday_hll,extra")
    homeloc(*run_args(src, tmp_path / "shaped", "--no-figures"))
    assert _homes(tmp_path / "shaped") == _homes(tmp_path / "plain")


def _swap_users(lines: list[bytes], at: int) -> tuple[list[bytes], int]:
    """Move the first user at or after data line ``at`` to the end; (lines, physical line)."""
    guids = [ln.split(b",", 1)[0] for ln in lines]
    i = at
    while guids[i] == guids[i - 1]:
        i += 1
    j = i
    while guids[j] == guids[i]:
        j += 1
    moved = lines[:i] + lines[j:] + lines[i:j]
    # the first line out of order is the moved user's first line, now after the last user
    return moved, 1 + (len(lines) - (j - i)) + 1


def _homes(out) -> list[str]:
    return sorted((out / "user_home_locations.csv").read_text().splitlines()[1:])


@pytest.mark.parametrize("batch_users", ["1000", "20"], ids=["in-a-batch", "at-boundaries"])
@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_users_in_any_order_give_the_same_homes(lines, tmp_path, batch_users):
    """A moved user or a reversed file is still grouped by user: not an error any more."""
    ref = tmp_path / "ref"
    homeloc(*run_args(write_lines(tmp_path / "sorted.csv", lines), ref, "--batch-users", batch_users))
    moved, _ = _swap_users(lines, len(lines) // 3)
    for name, body in (("moved", moved), ("reversed", lines[::-1])):
        out = tmp_path / name
        homeloc(*run_args(write_lines(tmp_path / f"{name}.csv", body), out,
                          "--batch-users", batch_users))
        assert _homes(out) == _homes(ref)


@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_a_user_split_in_two_is_named_with_both_lines(lines, tmp_path):
    guid = lines[10].split(b",", 1)[0]
    body = [ln for ln in lines if not ln.startswith(guid + b",")]
    mine = [ln for ln in lines if ln.startswith(guid + b",")]
    split = mine[:1] + body[:5] + mine[1:] + body[5:] if len(mine) > 1 else body[:5] + mine + body[5:] + mine
    msg = _fails_cleanly(write_lines(tmp_path / "split.csv", split), tmp_path / "out")
    where = [i + 2 for i, ln in enumerate(split) if ln.startswith(guid + b",")]
    assert "not together" in msg and guid.decode() in msg, msg
    nums = [int(n) for n in re.findall(r"line (\d+)", msg)]
    assert nums[0] in where and nums[1] in where and nums[0] < nums[1], (nums, where)


@pytest.mark.slow
def test_empty_file(tmp_path):
    src = tmp_path / "empty.csv"
    src.write_bytes(b"")
    assert "empty" in _fails_cleanly(src, tmp_path / "out")


@pytest.mark.slow
def test_header_only(tmp_path):
    src = tmp_path / "header.csv"
    src.write_bytes(HEADER + b"\n")
    assert "no data rows" in _fails_cleanly(src, tmp_path / "out")


@pytest.mark.parametrize("kind", ["random", "truncated_gzip", "utf16"])
@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_not_a_csv(lines, tmp_path, kind):
    src = tmp_path / "in.csv"
    if kind == "random":
        src.write_bytes(np.random.default_rng(1).bytes(50_000))
    elif kind == "truncated_gzip":  # a whole gzip is decompressed and read (test_inputs_gzip)
        import gzip

        src.write_bytes(gzip.compress(b"\n".join([HEADER, *lines]) + b"\n")[:3000])
    else:
        src.write_bytes(b"\n".join([HEADER, *lines[:20]]).decode().encode("utf-16"))
    msg = _fails_cleanly(src, tmp_path / "out")
    assert "not a CSV" in msg or "missing column" in msg or "not a complete gzip" in msg, msg
