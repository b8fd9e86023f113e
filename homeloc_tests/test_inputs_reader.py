"""read_batch / find_user: every reject reason with its exact line, CRLF + BOM, sorting, fuzzing."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homeloc_assets.inputs import InputError, find_user, parse_bytes, plan_batches, read_batch
from homeloc_tests.helpers import H1, H2, H_OTHER_PARAMS, write

HEADER = "user_guid,latitude,longitude,userday_hll"


def read_all(path):
    plan = plan_batches(path, 10**9)
    assert len(plan.batches) == 1
    b = plan.batches[0]
    return read_batch(path, b.start, b.end, plan.fingerprint,
                      expect=(plan.size, plan.mtime_ns, plan.fingerprint), hll_params=plan.hll_params)


def test_clean_rows(tmp_path):
    path = write(tmp_path, [f"a,1.5,2.5,{H1}", f"a,-3,4,{H2}", f"b,0,0,{H1}"])
    res = read_all(path)
    assert res.rows.num_rows == 3 and res.rejects.num_rows == 0 and res.n_lines == 3
    assert res.rows.schema.names == ["user_guid", "latitude", "longitude", "hll", "line"]
    assert res.rows.column("line").to_pylist() == [1, 2, 3]
    assert res.rows.column("latitude").to_pylist() == [1.5, -3.0, 0.0]
    assert res.rows.column("hll")[0].as_py() == bytes.fromhex(H1[2:])
    assert str(res.rows.schema.field("hll").type) == "binary"


def test_every_reject_reason_and_line(tmp_path):
    lines = [
        f"a,1,1,{H1}",  # 1 ok
        "a,1,1,zz",  # 2 not hex text
        f"a,1,1,{H1[:-3]}",  # 3 odd number of digits
        "a,1,1,\\x128b7f00",  # 4 truncated EXPLICIT value
        "a,1,1,\\x118b7f",  # 5 EMPTY hll
        "a,1,1,\\x728b7f",  # 6 unknown version
        "a,1,1,\\x198b7f",  # 7 unknown type
        "a,,1," + H1,  # 8 latitude missing
        "a,abc,1," + H1,  # 9 latitude not a number
        "a,nan,1," + H1,  # 10 not finite
        "a,1,inf," + H1,  # 11 longitude not finite
        "a,91,1," + H1,  # 12 latitude out of range
        "a,1,-180.5," + H1,  # 13 longitude out of range
        "a,1,1",  # 14 wrong field count (3)
        "a,1,1,x,y",  # 15 wrong field count (5)
        ",1,1," + H1,  # 16 empty user_guid
        HEADER,  # 17 repeated header
        "",  # 18 blank: skipped, counted
        "b,1,1,",  # 19 hll missing
        "b,2,2," + H2,  # 20 ok
    ]
    res = read_all(write(tmp_path, lines))
    rej = res.rejects.to_pylist()
    got = {r["line"]: r["reason"] for r in rej}
    assert res.n_lines == 20
    assert res.rows.column("line").to_pylist() == [1, 20]
    assert sorted(got) == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 19]
    assert "hex" in got[2] and "hex" in got[3]
    assert "truncated" in got[4]
    assert "empty hll" in got[5]
    assert "version" in got[6]
    assert "type" in got[7]
    assert got[8] == "latitude missing"
    assert got[9] == "latitude is not a number"
    assert got[10].startswith("latitude is not finite")
    assert got[11].startswith("longitude is not finite")
    assert got[12].startswith("latitude out of range")
    assert got[13].startswith("longitude out of range")
    assert got[14] == "wrong field count: 3 fields, expected 4"
    assert got[15] == "wrong field count: 5 fields, expected 4"
    assert got[16] == "empty user_guid"
    assert got[17] == "repeated header line"
    assert got[19] == "userday_hll missing"
    raw = {r["line"]: r["raw"] for r in rej}
    assert raw[15] == "a,1,1,x,y"


def test_raw_is_cut_to_200_chars(tmp_path):
    res = read_all(write(tmp_path, ["a,1,1," + "z" * 1000]))
    assert len(res.rejects.column("raw")[0].as_py()) == 200


def test_params_other_than_the_files_rejected(tmp_path):
    """The file's params are its first valid hll's; any row with others is rejected
    (not a per-user majority: a user's home must not depend on a tie-break)."""
    lines = [
        "a,1,1,\\xzz",  # 1 invalid: does not fix the params
        f"a,1,1,{H1}",  # 2 the first valid hll: the file's params
        f"a,1,1,{H_OTHER_PARAMS}",  # 3 -> reject
        f"b,1,1,{H_OTHER_PARAMS}",  # 4 -> reject (even as the user's first row)
        f"b,1,1,{H1}",  # 5
        f"c,1,1,{H_OTHER_PARAMS}",  # 6 -> reject
    ]
    res = read_all(write(tmp_path, lines))
    assert res.rejects.column("line").to_pylist() == [1, 3, 4, 6]
    why = res.rejects.column("reason").to_pylist()[1:]
    assert all("differ from the file's (log2m=11 regwidth=5" in r for r in why), why
    assert res.rows.column("line").to_pylist() == [2, 5]


def test_crlf_and_bom(tmp_path):
    lines = [f"a,1,1,{H1}", "", f"b,2,2,{H2}", "b,x,2," + H2]
    path = write(tmp_path, lines, newline="\r\n", bom=True)
    res = read_all(path)
    assert res.n_lines == 4
    assert res.rows.column("line").to_pylist() == [1, 3]
    assert res.rows.column("user_guid").to_pylist() == ["a", "b"]
    assert res.rejects.to_pylist() == [
        {"line": 4, "reason": "latitude is not a number", "raw": "b,x,2," + H2}
    ]
    # a range starting at 0 skips the header (line 1) and counts it
    full = read_batch(path, 0, os.path.getsize(path))
    assert full.rows.column("line").to_pylist() == [2, 4] and full.n_lines == 5


def test_stray_cr_and_bad_utf8(tmp_path):
    p = tmp_path / "x.csv"
    p.write_bytes(
        (HEADER + "\n").encode()
        + b"a,1,1,"
        + H1.encode()
        + b"\n"
        + b"a,1\r,1,"
        + H1.encode()
        + b"\n"
        + b"\xff\xfe,1,1,"
        + H1.encode()
        + b"\n"
        + "é,1,1,".encode()
        + H1.encode()
        + b"\n"
    )
    res = read_all(str(p))
    got = dict(
        zip(
            res.rejects.column("line").to_pylist(),
            res.rejects.column("reason").to_pylist(),
            strict=True,
        )
    )
    assert got == {2: "carriage return inside the line", 3: "not valid UTF-8"}
    assert res.rows.column("user_guid").to_pylist() == ["a", "é"]


def test_whitespace_around_hex_is_tolerated(tmp_path):
    res = read_all(write(tmp_path, [f"a,1,1, {H1} ", f"a,1,1,{H2}"]))
    assert res.rows.num_rows == 2
    assert res.rows.column("hll")[0].as_py() == bytes.fromhex(H1[2:])


def test_users_in_any_order_are_read(tmp_path):
    lines = [f"b,1,1,{H1}", f"c,1,1,{H1}", f"a,1,1,{H1}", f"a,2,2,{H1}"]
    path = write(tmp_path, lines)
    res = read_all(path)
    assert res.rows.column("user_guid").to_pylist() == ["b", "c", "a", "a"]
    assert res.users.num_rows == 3 and res.users.column("line").to_pylist() == [1, 2, 3]


def test_not_contiguous_user_raises_with_both_global_lines(tmp_path):
    path = write(tmp_path, [f"a,1,1,{H1}", f"b,1,1,{H1}", f"a,1,1,{H1}"])
    with pytest.raises(InputError, match="not together") as ei:
        read_all(path)
    assert ei.value.line == 4 and "line 2 and line 4" in str(ei.value)


def test_fingerprint_mismatch(tmp_path):
    path = write(tmp_path, [f"a,1,1,{H1}"])
    plan = plan_batches(path)
    with open(path, "a") as fh:
        fh.write(f"b,1,1,{H1}\n")
    with pytest.raises(InputError, match="changed"):
        read_batch(path, plan.batches[0].start, plan.batches[0].end, plan.fingerprint)


def test_batches_line_numbers_add_up(tmp_path):
    rng = np.random.default_rng(3)
    lines = []
    for u in range(300):
        for _ in range(int(rng.integers(1, 5))):
            lines.append(f"u{u:05d},{rng.uniform(-80, 80):.5f},{rng.uniform(-170, 170):.5f},{H1}")
            if rng.random() < 0.05:
                lines.append("")
            if rng.random() < 0.05:
                lines.append(f"u{u:05d},bad,1,{H1}")
    path = write(tmp_path, lines)
    expected_rows = [i + 2 for i, ln in enumerate(lines) if ln and ",bad," not in ln]
    expected_rej = [i + 2 for i, ln in enumerate(lines) if ",bad," in ln]
    for bu in (1, 7, 50, 10**6):
        plan = plan_batches(path, bu)
        base, got_rows, got_rej = 1, [], []
        for b in plan.batches:
            r = read_batch(path, b.start, b.end, plan.fingerprint)
            got_rows += [base + x for x in r.rows.column("line").to_pylist()]
            got_rej += [base + x for x in r.rejects.column("line").to_pylist()]
            base += r.n_lines
        assert got_rows == expected_rows and got_rej == expected_rej
        assert base == len(lines) + 1


def test_find_user(tmp_path):
    lines = []
    for u in range(2000):
        n = 40 if u == 777 else 1 + u % 3
        lines += [f"user{u:06d},{u % 80},{u % 170},{H1}"] * n
    path = write(tmp_path, lines)
    res = find_user(path, "user000777", global_lines=True)
    assert res.rows.num_rows == 40
    first = lines.index(f"user000777,{777 % 80},{777 % 170},{H1}") + 2
    assert res.rows.column("line").to_pylist() == list(range(first, first + 40))
    assert set(res.rows.column("user_guid").to_pylist()) == {"user000777"}
    for u in (0, 1, 1999):
        assert find_user(path, f"user{u:06d}").rows.num_rows == 1 + u % 3
    assert find_user(path, "nobody").rows.num_rows == 0
    assert find_user(path, "user000777x").rows.num_rows == 0


# ------------------------------------------------------------------ fuzzing

_ALPHABET = list(b"abc019,.-\\x\n\r e") + [0, 0xFF, 0xC3]
GOOD = (f"a,1,2,{H1}\nb,3,4,{H2}\nb,5,6,{H2}\n").encode()


def _check_fuzz(data: bytes) -> None:
    try:
        res = parse_bytes(data)
    except Exception as exc:  # noqa: BLE001 - the property: only the internal split-user signal
        # (read_batch turns it into the InputError naming two lines of the user)
        assert type(exc).__name__ == "_Split", repr(exc)
        lines = data.split(b"\n")
        assert len(exc.lines) == 2 and exc.lines[0] < exc.lines[1]
        assert all(exc.guid.encode() in lines[n - 1] for n in exc.lines)
        return
    lines = data.split(b"\n") if data else []
    if data.endswith(b"\n"):
        lines = lines[:-1]
    # blank = empty after removing one trailing \r (the CR of a CRLF)
    nonblank = sum(1 for ln in lines if (ln[:-1] if ln.endswith(b"\r") else ln) != b"")
    assert res.n_lines == len(lines)
    assert res.rows.num_rows + res.rejects.num_rows == nonblank
    all_lines = res.rows.column("line").to_pylist() + res.rejects.column("line").to_pylist()
    assert len(set(all_lines)) == len(all_lines)
    assert all(1 <= x <= len(lines) for x in all_lines)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_ALPHABET), max_size=300).map(bytes))
def test_fuzz_random_bytes(data):
    _check_fuzz(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(0, len(GOOD) - 1), st.sampled_from(_ALPHABET + [None])), max_size=8
    )
)
def test_fuzz_mutated_csv(mutations):
    data = bytearray(GOOD)
    for pos, byte in mutations:
        if pos >= len(data):
            continue
        if byte is None:
            del data[pos]
        else:
            data[pos] = byte
    _check_fuzz(bytes(data))


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=400))
def test_fuzz_read_batch_only_inputerror(tmp_path, blob):
    p = tmp_path / "f.csv"
    p.write_bytes((HEADER + "\n").encode() + blob)
    try:
        res = read_batch(str(p), len(HEADER) + 1, p.stat().st_size)
    except InputError:
        return
    assert res.rows.num_rows + res.rejects.num_rows <= res.n_lines


def test_quoted_fields_read_like_plain_ones(tmp_path):
    """Some tools quote every CSV field; the values are the same."""
    from homeloc_assets.inputs import plan_batches, read_batch

    h1, h2 = "\\x128b7f" + "00" * 7 + "01", "\\x128b7f" + "00" * 7 + "02"
    plain = tmp_path / "plain.csv"
    plain.write_text(f"user_guid,latitude,longitude,userday_hll\na,52.5,13.4,{h1}\nb,48.8,2.3,{h2}\n")
    quoted = tmp_path / "quoted.csv"
    quoted.write_text('"user_guid","latitude","longitude","userday_hll"\n'
                      f'"a","52.5","13.4","{h1}"\n"b","48.8","2.3","{h2}"\n')
    got = []
    for path in (plain, quoted):
        plan = plan_batches(path, 10)
        b = plan.batches[0]
        r = read_batch(path, b.start, b.end)
        assert r.rejects.num_rows == 0
        got.append(r.rows.drop_columns(["line"]))
    assert got[0].equals(got[1])


def test_find_user_is_not_misled_by_damaged_lines(tmp_path):
    """Repeated headers and broken lines between users do not hide anyone."""
    from homeloc_assets.inputs import find_user

    h = "\\x128b7f" + "00" * 7 + "01"
    lines = ["user_guid,latitude,longitude,userday_hll"]
    users = [f"{i:04x}" + "a" * 28 for i in range(0, 4000, 7)]
    for i, g in enumerate(users):
        lines += [f"{g},52.5,13.4,{h}", f"{g},48.8,2.3,{h}"]
        if i % 50 == 10:
            lines.append("user_guid,latitude,longitude,userday_hll")
        if i % 50 == 30:
            lines.append("zzzz,broken")
    path = tmp_path / "damaged.csv"
    path.write_text("\n".join(lines) + "\n")
    for g in users[::9] + [users[-1]]:
        r = find_user(path, g)
        assert r.rows.num_rows == 2 and set(r.rows.column("user_guid").to_pylist()) == {g}
    assert find_user(path, "ffff" + "a" * 28).rows.num_rows == 0
