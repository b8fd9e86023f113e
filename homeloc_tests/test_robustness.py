"""Issue 5, robustness: damaged rows of every kind go to rejected_rows.csv with their exact line.

End to end through ``homeloc run`` as a subprocess. One file carries every kind
of row damage (inserted lines, so every user keeps exactly its clean rows, plus
a few replaced rows whose users are then judged on their undamaged rows only),
mixed CRLF line ends, blank lines and a UTF-8 BOM. Checked: every damaged line
is listed with its 1-based physical line number and a reason, the run goes on,
undamaged users get the same answer as on the clean file, userdays equal
PostgreSQL's ``hll_union_agg`` on the undamaged rows; above ``--max-reject-share``
the run fails with one clear line and writes no exports.

The helpers (``homeloc``, ``base_rows``...) are in ``helpers.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
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


# ------------------------------------------------------------ damaged file
@dataclass
class Damaged:
    """A damaged copy of a clean file and what a correct reader must make of it."""

    data: bytes
    #: physical line (1-based) -> damage kind, for every damaged line
    damaged: dict[int, str] = field(default_factory=dict)
    #: physical line -> (guid, lat, lon, hll hex) of every undamaged data line
    good: dict[int, tuple[str, str, str, str]] = field(default_factory=dict)
    #: users that lost a row to damage (their answer may differ from the clean file's)
    hurt_users: set[str] = field(default_factory=set)


def _other_params(h: bytes) -> bytes:
    """The same hll hex with log2m 12 instead of 11 (still a valid value)."""
    assert h[:4].lower() == b"\\x12" or h[:4].lower() in (b"\\x13", b"\\x14")
    return h[:4] + b"8c" + h[6:] if h[4:6] == b"8b" else h[:4] + b"8b" + h[6:]


def make_damaged(lines: list[bytes]) -> Damaged:
    """Insert every kind of damaged line among ``lines`` (sorted, one user's rows contiguous)."""
    rows = [ln.split(b",") for ln in lines]
    explicit = [i for i, r in enumerate(rows) if r[3].startswith(b"\\x128b7f") and len(r[3]) > 24]
    rng = np.random.default_rng(5)
    # (kind, builder from a row's fields) -> one inserted line after that row, same user
    kinds = {
        "bad hex": lambda g, la, lo, h: b",".join([g, la, lo, b"\\x12zz" + h[6:]]),
        "hex with a stray prefix": lambda g, la, lo, h: b",".join([g, la, lo, b"0x" + h[2:]]),
        "odd hex digits": lambda g, la, lo, h: b",".join([g, la, lo, h[:-1]]),
        "truncated hll": lambda g, la, lo, h: b",".join([g, la, lo, h[:-2]]),
        "unknown hll version": lambda g, la, lo, h: b",".join([g, la, lo, b"\\x72" + h[4:]]),
        "unknown hll type": lambda g, la, lo, h: b",".join([g, la, lo, b"\\x19" + h[4:]]),
        "undefined hll": lambda g, la, lo, h: b",".join([g, la, lo, b"\\x108b7f"]),
        "empty hll": lambda g, la, lo, h: b",".join([g, la, lo, b"\\x118b7f"]),
        "hll missing": lambda g, la, lo, h: b",".join([g, la, lo, b""]),
        "other hll params": lambda g, la, lo, h: b",".join([g, la, lo, _other_params(h)]),
        "latitude missing": lambda g, la, lo, h: b",".join([g, b"", lo, h]),
        "longitude missing": lambda g, la, lo, h: b",".join([g, la, b" ", h]),
        "latitude not numeric": lambda g, la, lo, h: b",".join([g, b"5l.2", lo, h]),
        "longitude not numeric": lambda g, la, lo, h: b",".join([g, la, b"east", h]),
        "latitude nan": lambda g, la, lo, h: b",".join([g, b"NaN", lo, h]),
        "latitude out of range": lambda g, la, lo, h: b",".join([g, b"-90.01", lo, h]),
        "longitude out of range": lambda g, la, lo, h: b",".join([g, la, b"180.5", h]),
        "too few fields": lambda g, la, lo, h: b",".join([g, la, lo]),
        "too many fields": lambda g, la, lo, h: b",".join([g, la, lo, h, b"x"]),
        "one field": lambda g, la, lo, h: g,
        "repeated header": lambda g, la, lo, h: HEADER,
        "empty user_guid": lambda g, la, lo, h: b",".join([b"", la, lo, h]),
        "not utf-8": lambda g, la, lo, h: b",".join([g, la, lo + b"\xff", h]),
        "carriage return inside": lambda g, la, lo, h: b",".join([g, la + b"\r", lo, h]),
        "nul byte": lambda g, la, lo, h: b",".join([g, la, lo, h[:8] + b"\x00" + h[8:]]),
    }
    picks = sorted(rng.choice(explicit, size=2 * len(kinds), replace=False).tolist())
    after: dict[int, list[tuple[str, bytes]]] = {}
    for j, i in enumerate(picks):
        kind = list(kinds)[j % len(kinds)]
        after.setdefault(i, []).append((kind, kinds[kind](*rows[i])))
    # a few rows are replaced by damaged ones: their users are judged on the other rows
    replace = {}
    for i in sorted(rng.choice([i for i in explicit if i not in after], 6, replace=False).tolist()):
        replace[i] = b",".join([rows[i][0], b"91", rows[i][2], rows[i][3]])

    res = Damaged(b"")
    out = [b"\xef\xbb\xbf" + HEADER + b"\r\n"]  # BOM and a CRLF header
    line = 1

    def emit(content: bytes, kind: str | None, fields=None) -> None:
        nonlocal line
        line += 1
        end = b"\r\n" if line % 3 == 0 else b"\n"  # mixed CRLF / LF line ends: not damage
        out.append(content + end)
        if kind is not None:
            res.damaged[line] = kind
        elif fields is not None:
            res.good[line] = tuple(f.decode() for f in fields)

    for i, r in enumerate(rows):
        if i in replace:
            emit(replace[i], "latitude out of range (replaced)")
            res.hurt_users.add(r[0].decode())
        else:
            emit(lines[i], None, r)
        for kind, content in after.get(i, []):
            emit(content, kind)
        if i % 97 == 50:
            emit(b"", None)  # blank line: skipped, counted, not a reject
    res.data = b"".join(out)
    return res


def clean_file(lines: list[bytes], path: Path) -> Path:
    return write_lines(path, lines)


# -------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def damaged_case(tmp_path_factory):
    """Clean and damaged file, each run once through ``homeloc run`` (3 batches)."""
    tmp = tmp_path_factory.mktemp("damaged")
    _, lines = base_rows(360, 21, tmp)
    clean = clean_file(lines, tmp / "clean.csv")
    d = make_damaged(lines)
    bad = tmp / "damaged.csv"
    bad.write_bytes(d.data)
    homeloc(*run_args(clean, tmp / "out_clean", "--batch-users", "120"))
    res = homeloc(*run_args(bad, tmp / "out_bad", "--batch-users", "120",
                            "--max-reject-share", "0.5"))
    return {"tmp": tmp, "lines": lines, "d": d, "bad": bad, "clean_out": tmp / "out_clean",
            "out": tmp / "out_bad", "res": res}


@pytest.mark.slow
def test_every_damaged_line_is_listed_with_its_line_and_a_reason(damaged_case):
    d: Damaged = damaged_case["d"]
    out = damaged_case["out"]
    rej = pd.read_csv(out / "rejected_rows.csv", keep_default_na=False)
    assert list(rej.columns) == ["line", "reason", "raw", "batch"]
    got = dict(zip(rej.line.tolist(), rej.reason.tolist(), strict=True))
    assert len(got) == len(rej), "a line is listed twice"
    missing = {ln: k for ln, k in d.damaged.items() if ln not in got}
    extra = {ln: got[ln] for ln in got if ln not in d.damaged}
    assert not missing and not extra, (missing, extra)
    assert all(r.strip() for r in rej.reason), "a reject without a reason"
    # the raw text is the line's (cut at 200 chars): the numbers are physical lines
    physical = d.data.split(b"\n")
    for ln, raw in zip(rej.line, rej.raw, strict=True):
        text = physical[ln - 1].rstrip(b"\r").decode("utf-8", errors="replace")
        assert raw == text[:200], (ln, raw, text)
    # a few reasons say what is wrong
    by_kind = {k: got[ln] for ln, k in d.damaged.items()}
    assert "hex" in by_kind["bad hex"]
    assert "parameters" in by_kind["other hll params"]
    assert "empty hll" in by_kind["empty hll"]
    assert by_kind["latitude missing"] == "latitude missing"
    assert "out of range" in by_kind["longitude out of range"]
    assert by_kind["repeated header"] == "repeated header line"
    assert "field count" in by_kind["too many fields"]
    summary = (out / "summary.json").read_text()
    assert f'"rejected_rows": {len(d.damaged)}' in summary


@pytest.mark.slow
def test_undamaged_rows_are_exactly_the_rows_used(damaged_case):
    d: Damaged = damaged_case["d"]
    files = sorted((damaged_case["out"] / ".homeloc" / "assets" / "user_locations").glob("*.parquet"))
    locs = pd.concat([pq.read_table(f).to_pandas() for f in files])
    stats_dir = damaged_case["out"] / ".homeloc" / "batch_stats"
    import json

    # batch-relative lines -> physical: header line + lines of the batches before
    offset, lines_global = 1, []
    for f in files:
        n = json.loads((stats_dir / f.name.replace(".parquet", ".json")).read_text())["n_lines"]
        part = pq.read_table(f, columns=["line"]).column("line").to_numpy() + offset
        lines_global.extend(part.tolist())
        offset += n
    assert sorted(lines_global) == sorted(d.good)
    got = {(g, la, lo, "\\x" + bytes(h).hex()) for g, la, lo, h in
           zip(locs.user_guid, locs.latitude, locs.longitude, locs.userday_hll, strict=True)}
    want = {(g, float(la), float(lo), h.lower()) for g, la, lo, h in d.good.values()}
    assert got == want


@pytest.mark.slow
def test_undamaged_users_get_the_clean_answer(damaged_case):
    d: Damaged = damaged_case["d"]
    clean, bad = damaged_case["clean_out"], damaged_case["out"]
    for name in ["user_home_locations.csv", "user_classification.csv"]:
        a = pd.read_csv(clean / name)
        b = pd.read_csv(bad / name)
        a = a[~a.user_guid.isin(d.hurt_users)].reset_index(drop=True)
        b = b[~b.user_guid.isin(d.hurt_users)].reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b)
    a = pd.read_parquet(clean / "user_country_userdays.parquet")
    b = pd.read_parquet(bad / "user_country_userdays.parquet")
    a = a[~a.user_guid.isin(d.hurt_users)].reset_index(drop=True)
    b = b[~b.user_guid.isin(d.hurt_users)].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    assert len(d.hurt_users) > 0
    assert "rejected rows" in damaged_case["res"].stdout


@pytest.mark.postgres
@pytest.mark.slow
def test_userdays_equal_postgresql_on_the_undamaged_rows(damaged_case, pg_conn):
    out = damaged_case["out"]
    files = sorted((out / ".homeloc" / "assets" / "user_locations").glob("*.parquet"))
    locs = pd.concat([pq.read_table(f).to_pandas() for f in files])
    locs = locs[locs.country.notna()]
    with pg_conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE rb_loc (user_guid text, country text, h hll)")
        cur.executemany("INSERT INTO rb_loc VALUES (%s, %s, %s::hll)",
                        [(g, c, "\\x" + bytes(h).hex()) for g, c, h in
                         zip(locs.user_guid, locs.country, locs.userday_hll, strict=True)])
        cur.execute("SELECT user_guid, country, hll_cardinality(hll_union_agg(h)) FROM rb_loc "
                    "GROUP BY 1, 2")
        pg = pd.DataFrame(cur.fetchall(), columns=["user_guid", "country", "pg"])
        cur.execute("DROP TABLE rb_loc")
    cu = pd.read_parquet(out / "user_country_userdays.parquet")
    m = pg.merge(cu, on=["user_guid", "country"], how="outer")
    assert len(m) == len(pg) == len(cu) > 0
    np.testing.assert_array_equal(m.userdays.to_numpy(), m.pg.to_numpy())
    # the users who lost a row but kept others are among them, judged on what is left
    d: Damaged = damaged_case["d"]
    kept = {g for g, *_ in d.good.values()}
    assert d.hurt_users & kept and (d.hurt_users & kept) <= set(pg.user_guid)


@pytest.mark.slow
def test_above_max_reject_share_the_run_fails_without_exports(damaged_case, tmp_path):
    out = tmp_path / "out"
    res = homeloc(*run_args(damaged_case["bad"], out, "--batch-users", "120",
                            "--max-reject-share", "0.001"), check=False)
    assert res.returncode != 0
    msg = one_error_line(res)
    assert "rejected" in msg and "limit" in msg and "--max-reject-share" in msg, msg
    assert not any((out / n).exists() for n in EXPORTS), export_files(out).keys()
    assert not export_files(out)


@pytest.mark.slow
def test_every_row_rejected_writes_the_rejects_before_stopping(tmp_path):
    """Issue 10: the reject-share stop writes <out>/stopped_run/rejected_rows.csv and names it."""
    src = tmp_path / "in.csv"
    src.write_bytes(HEADER + b"\na,52.5,13.4,zz\nb,48.8,2.3,zz\nc,41.9,12.5,\\xnothex\n")
    out = tmp_path / "out"
    res = homeloc(*run_args(src, out, "--no-figures"), check=False)
    assert res.returncode == 2
    line = one_error_line(res)
    stopped = out / "stopped_run" / "rejected_rows.csv"
    assert str(stopped.resolve()) in line and "(3)" in line and "not bytea hex" in line, line
    rej = pd.read_csv(stopped)
    assert rej.line.tolist() == [2, 3, 4]
    assert not (out / "user_home_locations.csv").exists()
