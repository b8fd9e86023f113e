"""Issue 5, fuzzing: plan + ``read_batch`` over mutated copies of a real (synthetic) file.

The reader's own fuzz tests (test_inputs_reader.py: random bytes, a mutated
3-line CSV, random binary through ``read_batch``) and the HLL decoder's
(test_hll_engine.py: random bytes, plausible headers, ``unhex_many``, mutated
PostgreSQL values) cover single ranges. Here a real file is damaged by byte and
line mutations and then planned into small batches and read batch by batch,
as ``homeloc run`` does. The properties: only ``InputError`` is raised;
otherwise every non-blank physical line is exactly one row or one reject (with
its global line number and raw text), the batches' lines add up to the file,
and no user is in two batches.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homeloc_assets.inputs import InputError, plan_batches, read_batch
from homeloc_tests.helpers import HEADER, base_rows

_BYTES = list(b",\n\r\\x0189abf.-e ") + [0, 0xFF, 0xC3, 0x22]


@pytest.fixture(scope="module")
def real_lines(tmp_path_factory):
    _, lines = base_rows(40, 71, tmp_path_factory.mktemp("fuzz"))
    return lines


_line_ops = st.tuples(st.sampled_from(["dup", "del", "swap", "header", "blank", "crlf"]),
                      st.integers(0, 10**6))
_byte_ops = st.tuples(st.sampled_from(["set", "del", "ins"]), st.integers(0, 10**7),
                      st.sampled_from(_BYTES))


def mutate(lines: list[bytes], line_ops, byte_ops) -> bytes:
    lines = list(lines)
    for op, i in line_ops:
        i %= len(lines)
        if op == "dup":
            lines.insert(i, lines[i])
        elif op == "del" and len(lines) > 1:
            del lines[i]
        elif op == "swap" and i + 1 < len(lines):
            lines[i], lines[i + 1] = lines[i + 1], lines[i]
        elif op == "header":
            lines.insert(i, HEADER)
        elif op == "blank":
            lines.insert(i, b"")
        elif op == "crlf":
            lines[i] += b"\r"
    data = bytearray(b"\n".join([HEADER, *lines]) + b"\n")
    for op, pos, byte in byte_ops:
        pos = len(HEADER) + 1 + pos % (len(data) - len(HEADER) - 1)  # keep the header intact
        if op == "set":
            data[pos] = byte
        elif op == "del":
            del data[pos]
        else:
            data.insert(pos, byte)
    return bytes(data)


def check_file(path) -> None:
    data = path.read_bytes()
    for batch_users in (1, 3, 1000):
        try:
            plan = plan_batches(path, batch_users)
            parts = [read_batch(path, b.start, b.end, plan.fingerprint) for b in plan.batches]
        except InputError:
            continue  # only the file-level error is allowed
        physical = data.split(b"\n")
        if data.endswith(b"\n"):
            physical = physical[:-1]
        header_lines = data[: plan.header_end].count(b"\n")
        assert header_lines + sum(p.n_lines for p in parts) == len(physical)
        seen: dict[int, str] = {}
        offset = header_lines
        prev_last = None
        for p in parts:
            for ln in p.rows.column("line").to_pylist():
                assert ln + offset not in seen
                seen[ln + offset] = "row"
            for ln, raw in zip(p.rejects.column("line").to_pylist(),
                               p.rejects.column("raw").to_pylist(), strict=True):
                assert ln + offset not in seen
                seen[ln + offset] = "reject"
                text = physical[ln + offset - 1]
                text = text[:-1] if text.endswith(b"\r") else text
                assert raw == text.decode("utf-8", errors="replace")[:200]
            guids = set(p.rows.column("user_guid").to_pylist())
            if prev_last is not None and guids & prev_last:
                # users may come in any order; a user in two batches is a split user,
                # which the check over all batches must find (exit 2 in a run)
                from homeloc_assets.inputs.grouping import find_split_user

                assert find_split_user(path, [q.users for q in parts]) is not None
            prev_last = (prev_last or set()) | guids
            offset += p.n_lines
        nonblank = {i + 1 for i, ln in enumerate(physical)
                    if i >= header_lines and (ln[:-1] if ln.endswith(b"\r") else ln) != b""}
        assert set(seen) == nonblank


@pytest.mark.heavy
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(_line_ops, max_size=6), st.lists(_byte_ops, max_size=6))
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_fuzz_mutated_real_file_through_plan_and_read_batch(real_lines, tmp_path, line_ops, byte_ops):
    p = tmp_path / "m.csv"
    p.write_bytes(mutate(real_lines, line_ops, byte_ops))
    check_file(p)


@pytest.mark.parametrize("kind", ["header", "five_fields", *(
    pytest.param(k, marks=pytest.mark.heavy)  # the same code path; make test-all runs them
    for k in ("empty_guid", "one_field", "bad_utf8", "stray_cr", "spaces"))])
@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_a_damaged_line_at_any_boundary_is_only_a_reject(real_lines, tmp_path, kind):
    """Regression: a damaged line where planning looks for a boundary used to fail the file."""
    damaged = {
        "header": HEADER,
        "empty_guid": b",1,2,\\x118b7f",
        "one_field": b"zzzz",
        "bad_utf8": b"\xff\xfe,1,2,3",
        "stray_cr": b"zz\r,1,2,3",
        "five_fields": b"zzzz,1,2,3,4",
        "spaces": b"   ",
    }[kind]
    p = tmp_path / "d.csv"
    for at in range(1, len(real_lines), 2):
        lines = real_lines[:at] + [damaged] + real_lines[at:]
        p.write_bytes(b"\n".join([HEADER, *lines]) + b"\n")
        for batch_users in (1, 2, 5):
            plan = plan_batches(p, batch_users)  # no InputError: the file is sorted
            rej = [read_batch(p, b.start, b.end, plan.fingerprint).rejects.num_rows
                   for b in plan.batches]
            assert sum(rej) == 1, (kind, at, batch_users)
