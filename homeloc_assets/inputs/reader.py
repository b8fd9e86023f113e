"""Reading and validating one byte range (a batch) of the userdays CSV, vectorised.

Owns the row-level contract of the input: which lines become rows, which
become rejects (and why), and which problems stop the whole file
(:class:`InputError`: a user whose rows are not together, file changed since
planning). Everything is numpy/pyarrow over the whole range; Python loops run
only over rejected lines (to cut their raw text) and over lines with non-ASCII
bytes (to check UTF-8).

How a range is read:

1. one ``read`` of ``[start, end)``; line ends (``\\n``) and commas are found
   with numpy, so every physical line has its number before any parsing;
2. blank lines are skipped (but counted); lines with a wrong field count, a
   stray ``\\r`` or invalid UTF-8 become rejects and are cut out of the
   buffer, so ``pyarrow.csv`` (quoting off, ``newlines_in_values=False``) sees
   only lines with exactly 4 fields and row i maps to a known line;
3. coordinates are parsed by one Arrow cast (with a regex fallback that finds
   the bad values), HLLs by ``hll.unhex_many`` + ``hll.inspect_many``;
4. each user's rows must be together (users in any order: byte order, a
   linguistic collation, numeric ids, concatenated exports) or InputError;
   the range's users are returned as 64-bit hashes with their first line, so
   that the check over all batches is exact in bounded memory
   (:mod:`homeloc_assets.inputs.grouping`); within each user, rows whose HLL
   parameters differ from the user's majority are rejected (ties: the params
   of the user's first row win).
5. the hll column may be ``\\x…`` (bytea hex), ``\\\\x…`` (psql's text-format
   COPY doubles the backslash) or bare hex (``encode(h::bytea, 'hex')``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from homeloc_assets import hll
from homeloc_assets.inputs.errors import InputError
from homeloc_assets.inputs.plan import (
    BOM,
    COLUMNS,
    STANDARD,
    Layout,
    _lines_before,
    file_fingerprint,
    fingerprint_fd,
    read_layout,
)
from homeloc_assets.native import load_extension

__all__ = [
    "EXPORTED_REJECTS_SCHEMA",
    "REJECTS_SCHEMA",
    "ROWS_SCHEMA",
    "BatchRows",
    "find_user",
    "parse_bytes",
    "read_batch",
]

ROWS_SCHEMA = pa.schema(
    [
        ("user_guid", pa.string()),
        ("latitude", pa.float64()),
        ("longitude", pa.float64()),
        ("hll", pa.binary()),
        ("line", pa.int64()),
    ]
)
REJECTS_SCHEMA = pa.schema([("line", pa.int64()), ("reason", pa.string()), ("raw", pa.string())])
#: ``rejected_rows.csv``: a batch's rejects (lines made file-global) and the batch key
EXPORTED_REJECTS_SCHEMA = REJECTS_SCHEMA.append(pa.field("batch", pa.string()))
#: per user of a range: 64-bit hash of the user_guid, byte offset and line of its first row
USERS_SCHEMA = pa.schema([("hash", pa.uint64()), ("offset", pa.int64()), ("line", pa.int64())])
GROUP_HINT = (
    "each user's rows must be together (any order of users is fine, e.g. ORDER BY user_guid "
    "in any collation)"
)
RAW_MAX = 200
_NAMES = ["user_guid", "latitude", "longitude", "hll"]
_NUM_RE = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_NONFINITE_RE = r"^[+-]?([nN][aA][nN]|[iI][nN][fF]([iI][nN][iI][tT][yY])?)$"


@dataclass(frozen=True)
class BatchRows:
    """Valid rows and rejects of one byte range.

    ``rows``: ``user_guid`` string, ``latitude``/``longitude`` float64,
    ``hll`` binary (decoded bytea), ``line`` int64; ``rejects``: ``line``
    int64, ``reason`` string, ``raw`` string (the line, cut to 200 chars).
    ``line`` is the 1-based physical line number relative to ``start`` (line 1
    is the first line of the range) unless ``line_base`` says otherwise;
    ``n_lines`` counts every physical line of the range, blank ones included.
    ``line_base`` is what was already added to ``line`` (0: relative).
    """

    rows: pa.Table
    rejects: pa.Table
    n_lines: int
    start: int = 0
    end: int = 0
    line_base: int = 0
    users: pa.Table | None = None  # USERS_SCHEMA: one row per user of the range
    #: ``rows``' hll column as validated (``hll.parse_many``), for grouped unions without
    #: a new parse; None when not kept
    parsed_hll: hll.ParsedColumn | None = None


# --------------------------------------------------------------------- helpers


def _scan_lines_numpy(buf: np.ndarray) -> tuple[np.ndarray, ...]:
    """Line starts, content ends (\\n and one trailing \\r excluded), raw ends (incl. \\n),
    commas per line and flags per line (1: a \\r inside the content, 2: a byte >= 0x80).

    The reference of the compiled ``_scan.scan_lines`` (see ``_scan.c``), used without it.
    """
    n = len(buf)
    nl = np.flatnonzero(buf == 10)
    starts = np.concatenate([[0], nl + 1]).astype(np.int64)
    ends = np.concatenate([nl, [n]]).astype(np.int64)
    if len(starts) and starts[-1] == n:  # data ends with \n: no extra line
        starts, ends = starts[:-1], ends[:-1]
    raw_end = np.minimum(ends + 1, n)
    if len(ends):
        has = ends > starts
        cr = np.zeros(len(ends), dtype=bool)
        cr[has] = buf[ends[has] - 1] == 13
        ends = ends - cr
    # commas per line: commas before each line start, differenced
    cpos = np.flatnonzero(buf == 44)
    commas = np.diff(np.append(np.searchsorted(cpos, starts), len(cpos))).astype(np.int32)
    flags = np.zeros(len(starts), np.uint8)
    if len(starts) and np.count_nonzero(buf == 13):
        crpos = np.flatnonzero(buf == 13)
        flags[np.searchsorted(crpos, ends) > np.searchsorted(crpos, starts)] |= 1
    if len(starts) and np.count_nonzero(buf >= 0x80):
        hi = np.flatnonzero(buf >= 0x80)
        flags[np.unique(np.searchsorted(starts, hi, side="right") - 1)] |= 2
    return starts, ends, raw_end, commas, flags


#: the compiled line scan (``_scan.c``, interface version 2), None where not built
_SCAN = load_extension("homeloc_assets.inputs._scan", 2)


def _scan_lines(data: bytes) -> tuple[np.ndarray, ...]:
    """:func:`_scan_lines_numpy` of ``data`` in one compiled pass where ``_scan.c`` was built."""
    if _SCAN is None:
        return _scan_lines_numpy(np.frombuffer(data, np.uint8))
    # room for lines of 32 bytes on average (the real data's are 70-90); counted if short
    lines = _scan_into(data, len(data) // 32 + 16)
    if lines is None:
        count = (data.count(b"\n") if isinstance(data, bytes | bytearray)
                 else int(np.count_nonzero(np.frombuffer(data, np.uint8) == 10)))
        lines = _scan_into(data, count + 1)
    return lines


def _scan_into(data: bytes, cap: int) -> tuple[np.ndarray, ...] | None:
    """``_scan.scan_lines`` into arrays for ``cap`` lines; None when there are more."""
    starts, ends, raw_end = (np.empty(cap, np.int64) for _ in range(3))
    commas, flags = np.empty(cap, np.int32), np.empty(cap, np.uint8)
    n = _SCAN.scan_lines(data, starts, ends, raw_end, commas, flags)
    return None if n < 0 else (starts[:n], ends[:n], raw_end[:n], commas[:n], flags[:n])


def _parse_float(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values, ok-as-number mask) of a string column; cast once, regex only on failure."""
    try:
        out = pc.cast(values, pa.float64())
        return out.to_numpy(zero_copy_only=False), np.ones(len(values), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    trimmed = pc.utf8_trim_whitespace(values)
    ok = pc.or_(
        pc.match_substring_regex(trimmed, _NUM_RE),
        pc.match_substring_regex(trimmed, _NONFINITE_RE),
    )
    ok_np = np.asarray(ok.to_numpy(zero_copy_only=False), dtype=bool)
    safe = pc.if_else(ok, trimmed, pa.scalar("0", trimmed.type))
    try:
        vals = pc.cast(safe, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # pragma: no cover - belt and braces
        vals = np.zeros(len(values))
        for i, s in enumerate(safe.to_pylist()):
            try:
                vals[i] = float(s)
            except ValueError:
                ok_np[i] = False
    return vals, ok_np


def params_text(code: int) -> str:
    """``log2m=11 regwidth=5 expthresh=-1 sparseon=1`` of a params code (for reject reasons)."""
    p = hll.params_of_code(int(code))
    return f"log2m={p.log2m} regwidth={p.regwidth} expthresh={p.expthresh} sparseon={p.sparseon}"


def _params_mismatch(params: np.ndarray, valid: np.ndarray, ref: int | None) -> tuple[np.ndarray, int | None]:
    """(mask of valid rows whose params differ from ``ref``, the reference used).

    ``ref`` is the file's params code (its first valid hll, found at planning),
    so the verdict on a row never depends on the batch size or on the other
    rows of its user; without it, the first valid row of ``params`` is used.
    """
    vidx = np.flatnonzero(valid)
    if not len(vidx):
        return np.zeros(len(params), dtype=bool), ref
    if ref is None:
        ref = int(params[vidx[0]])
    return valid & (params != ref), ref


def _unhex(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """``hll.unhex_many`` as a binary array (the rows schema's type) and the ok mask."""
    blobs, ok = hll.unhex_many(values)
    return blobs.cast(pa.binary()), ok


def _hex_text(col: pa.Array) -> pa.Array:
    """The hll texts of real exports as ``\\x…``: psql's text COPY writes ``\\\\x…``,
    ``encode(h::bytea, 'hex')`` bare hex; each costs one vectorised pass when present."""
    if len(col) == 0:
        return col
    doubled = pc.starts_with(col, "\\\\")
    if pc.any(doubled).as_py():
        col = pc.if_else(doubled, pc.utf8_slice_codeunits(col, 1), col)
    bare = pc.invert(pc.starts_with(col, "\\"))
    if pc.any(bare).as_py():
        trimmed = pc.utf8_trim_whitespace(col)
        bare = pc.and_(pc.invert(pc.starts_with(trimmed, "\\")),
                       pc.greater(pc.utf8_length(trimmed), 0))
        col = pc.if_else(bare, pc.binary_join_element_wise("\\x", trimmed, ""), col)
    return col


def _raw_text(data: bytes, starts: np.ndarray, ends: np.ndarray) -> list[str]:
    return [
        data[s : min(e, s + RAW_MAX * 4)].decode("utf-8", errors="replace")[:RAW_MAX]
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True)
    ]


def _python_split(data: bytes, starts: np.ndarray, ends: np.ndarray, layout: Layout = STANDARD) -> pa.Table:
    """Slow but simple split of known-good lines (only used if Arrow disagrees on the row count)."""
    cols: list[list[str]] = [[], [], [], []]
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        parts = data[s:e].decode("utf-8").split(",")
        parts = [parts[i] for i in layout.index]
        for c, v in zip(cols, parts, strict=True):
            c.append(v)
    return pa.table({n: pa.array(c, pa.string()) for n, c in zip(_NAMES, cols, strict=True)})


# ------------------------------------------------------------------------ core


class _Split(Exception):
    """Internal: ``guid``'s rows are not together (relative ``lines``, file ``offsets``)."""

    def __init__(self, guid: str, lines: list[int], offsets: list[int]) -> None:
        super().__init__(guid, lines, offsets)
        self.guid, self.lines, self.offsets = guid, lines, offsets


def user_hash(guids: pa.Array) -> np.ndarray:
    """64-bit hashes of user_guids (pandas' SipHash over the UTF-8 text), vectorised."""
    import pandas as pd

    return pd.util.hash_array(np.asarray(guids.to_numpy(zero_copy_only=False), dtype=object),
                              categorize=False)


def _count_newlines(path: str | Path, end: int) -> int:
    """Number of \n in ``[0, end)`` (a sequential scan; used only for error messages)."""
    with open(path, "rb") as fh:
        return _lines_before(fh, end)


def split_user_error(path: str | Path, guid: str, offsets: list[int]) -> InputError:
    """The structural error for a user whose rows are not together, naming two lines."""
    lines = [_count_newlines(path, o) + 1 for o in offsets]
    return InputError(
        f"{path}: the rows of user {guid[:80]!r} are not together: line {lines[0]} and line "
        f"{lines[1]} with other users' rows between; {GROUP_HINT}",
        line=lines[1],
        offset=offsets[1],
    )


class _Reasons:
    """Per-row reject reasons as int codes (0 = ok) plus their texts; first reason wins."""

    def __init__(self, n: int) -> None:
        self.code = np.zeros(n, dtype=np.int32)
        self.texts: list[str | None] = [None]
        self._ids: dict[str, int] = {}

    def _id(self, text: str) -> int:
        i = self._ids.get(text)
        if i is None:
            i = self._ids[text] = len(self.texts)
            self.texts.append(text)
        return i

    def mark(self, mask: np.ndarray, why: str | np.ndarray) -> None:
        """Give rows in ``mask`` (not yet rejected) the reason ``why`` (a text or per-row texts)."""
        if not mask.any():
            return
        sel = mask & (self.code == 0)
        if isinstance(why, str):
            self.code[sel] = self._id(why)
        else:
            for r in np.flatnonzero(sel).tolist():
                self.code[r] = self._id(str(why[r]))

    def text(self, idx: np.ndarray) -> list[str | None]:
        return [self.texts[c] for c in self.code[idx].tolist()]


def _bool(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=bool)


def _prescan(data: bytes, skip_header: bool, layout: Layout = STANDARD):
    """Physical lines and the line-level verdicts, before any parsing.

    Returns (starts, ends, raw_end, skip, reasons) where ``skip`` marks blank
    lines (and a leading header) and ``reasons`` the line-level rejects.
    """
    starts, ends, raw_end, commas, flags = _scan_lines(data)
    n_lines = len(starts)
    skip = ends == starts  # blank lines
    if skip_header and n_lines:
        first = data[starts[0] : ends[0]]
        if first.startswith(BOM):
            first = first[len(BOM) :]
        if first.endswith(b"\r"):
            first = first[:-1]
        if first in (layout.header, ",".join(COLUMNS).encode()):
            skip[0] = True
    reasons = _Reasons(n_lines)
    if not n_lines:
        return starts, ends, raw_end, skip, reasons
    wrong = ~skip & (commas != layout.fields - 1)
    if wrong.any():
        idx = np.flatnonzero(wrong)
        texts = np.full(n_lines, None, dtype=object)
        texts[idx] = [
            f"wrong field count: {c + 1} fields, expected {layout.fields}" for c in commas[idx].tolist()
        ]
        reasons.mark(wrong, texts)
    reasons.mark(~skip & (flags & 1 > 0), "carriage return inside the line")
    high = np.flatnonzero(flags & 2)
    if len(high):
        bad = np.zeros(n_lines, dtype=bool)
        for li in high.tolist():
            if not skip[li] and reasons.code[li] == 0:
                try:
                    data[starts[li] : ends[li]].decode("utf-8")
                except UnicodeDecodeError:
                    bad[li] = True
        reasons.mark(bad, "not valid UTF-8")
    return starts, ends, raw_end, skip, reasons


def _unquote(col: pa.Array) -> pa.Array:
    """Values written as CSV quoted fields (``"abc"``) without their quotes.

    None of the four fields can hold a comma, quote or line break, so a quoted
    field is just its text between the quotes; checked first so that unquoted
    files pay one ``starts_with``.
    """
    if len(col) == 0 or not pc.any(pc.starts_with(col, '"')).as_py():
        return col
    return pc.replace_substring_regex(col, r'^"(.*)"$', r"\1")


def parse_bytes(
    data: bytes,
    *,
    offset: int = 0,
    skip_header: bool = False,
    use_threads: bool = True,
    hll_params: int | None = None,
    layout: Layout = STANDARD,
) -> BatchRows:
    """Validate CSV lines in ``data`` (no header unless ``skip_header``); see :func:`read_batch`.

    ``layout``: where the four columns are (:func:`~homeloc_assets.inputs.plan.read_layout`).

    ``hll_params``: the file's params code (rows with other params are
    rejected); None: the params of the first valid row of ``data``.

    ``offset`` is the file offset of ``data[0]``. Raises ``_Split`` (internal)
    when a user's rows are not together; :func:`read_batch` turns it into InputError.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    starts, ends, raw_end, skip, line_rej = _prescan(data, skip_header, layout)
    n_lines = len(starts)
    pre_rej = line_rej.code != 0
    gidx = np.flatnonzero(~skip & ~pre_rej)
    table = _read_good_lines(data, buf, starts, raw_end, gidx, skip, ends, pre_rej, use_threads,
                             layout)

    m = table.num_rows
    guid = _unquote(table.column("user_guid").combine_chunks())
    lat_s = _unquote(table.column("latitude").combine_chunks())
    lon_s = _unquote(table.column("longitude").combine_chunks())
    hll_s = _unquote(table.column("hll").combine_chunks())
    rr = _Reasons(m)

    is_header = _bool(pc.equal(pc.utf8_lower(guid), "user_guid"))
    if is_header.any():
        is_header &= _bool(pc.equal(pc.utf8_lower(lat_s), "latitude"))
        rr.mark(is_header, "repeated header line")
    empty_guid = _bool(pc.equal(pc.utf8_length(guid), 0))
    rr.mark(empty_guid, "empty user_guid")

    # ---- grouping (structural): each user's rows together, users in any order
    keyed = ~is_header & ~empty_guid
    kidx = np.flatnonzero(keyed)
    users = USERS_SCHEMA.empty_table()
    if len(kidx):
        g = guid if len(kidx) == m else guid.take(pa.array(kidx))
        run = np.ones(len(kidx), dtype=bool)
        if len(kidx) > 1:
            run[1:] = _bool(pc.not_equal(g[1:], g[:-1]))
        run_at = np.flatnonzero(run)
        run_guid = g.take(pa.array(run_at))
        if len(run_at) > 1 and pc.count_distinct(run_guid).as_py() < len(run_at):
            codes = pc.dictionary_encode(run_guid).indices.to_numpy(zero_copy_only=False)
            order = np.argsort(codes, kind="stable")
            again = np.flatnonzero(codes[order][1:] == codes[order][:-1])
            second = order[again + 1]
            j = int(np.argmin(second))
            first, later = int(order[again[j]]), int(second[j])
            rows_at = kidx[run_at[[first, later]]]
            raise _Split(str(run_guid[first].as_py()),
                         [int(gidx[r]) + 1 for r in rows_at],
                         [offset + int(starts[gidx[r]]) for r in rows_at])
        first_rows = kidx[run_at]
        users = pa.table({
            "hash": pa.array(user_hash(run_guid), pa.uint64()),
            "offset": pa.array(offset + starts[gidx[first_rows]].astype(np.int64), pa.int64()),
            "line": pa.array(gidx[first_rows].astype(np.int64) + 1, pa.int64()),
        }, schema=USERS_SCHEMA)

    coords = {}
    for name, col, lo, hi in (
        ("latitude", lat_s, -90.0, 90.0),
        ("longitude", lon_s, -180.0, 180.0),
    ):
        vals, ok = _parse_float(col)
        if not ok.all():
            rr.mark(
                _bool(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(col)), 0)), f"{name} missing"
            )
            rr.mark(~ok, f"{name} is not a number")
        finite = np.isfinite(vals)
        rr.mark(ok & ~finite, f"{name} is not finite (NaN or infinity)")
        rr.mark(ok & finite & ((vals < lo) | (vals > hi)), f"{name} out of range [{lo:g}, {hi:g}]")
        coords[name] = vals

    blobs, hex_ok = _unhex(_hex_text(hll_s))
    if not hex_ok.all():
        rr.mark(
            _bool(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(hll_s)), 0)),
            "userday_hll missing",
        )
        rr.mark(
            ~hex_ok,
            "userday_hll is not bytea hex text (expected \\x followed by an even number of hex digits)",
        )
    parsed = hll.parse_many(blobs)
    insp = parsed.inspect()
    bad_hll = ~np.asarray(insp.ok, dtype=bool) & hex_ok
    if bad_hll.any():
        why = np.full(m, None, dtype=object)
        for r in np.flatnonzero(bad_hll).tolist():
            why[r] = f"invalid hll: {insp.reason[r] or 'malformed'}"
        rr.mark(bad_hll, why)
    st = np.asarray(insp.storage_type)
    rr.mark(st == hll.EMPTY, "empty hll (no userdays)")
    rr.mark(st == hll.UNDEFINED, "undefined hll")

    # ---- params: every row must have the file's (the first valid hll's)
    if m:
        params = np.asarray(insp.params)
        other, ref = _params_mismatch(params, rr.code == 0, hll_params)
        if other.any():
            why = np.full(m, None, dtype=object)
            want = params_text(ref)
            for code in np.unique(params[other]).tolist():
                why[other & (params == code)] = (
                    f"hll parameters {params_text(code)} differ from the file's ({want}, "
                    "those of its first valid hll)"
                )
            rr.mark(other, why)

    valid = rr.code == 0
    vidx = np.flatnonzero(valid)
    lines_good = gidx.astype(np.int64) + 1
    hll_bin = blobs.cast(pa.binary()) if blobs.type != pa.binary() else blobs
    if len(vidx) == m:
        cols = [guid, coords["latitude"], coords["longitude"], hll_bin, lines_good]
    else:
        take = pa.array(vidx, pa.int64())
        cols = [
            guid.take(take),
            coords["latitude"][vidx],
            coords["longitude"][vidx],
            hll_bin.take(take),
            lines_good[vidx],
        ]
    rows = pa.Table.from_arrays(
        [
            cols[0],
            pa.array(cols[1], pa.float64()),
            pa.array(cols[2], pa.float64()),
            cols[3],
            pa.array(cols[4], pa.int64()),
        ],
        schema=ROWS_SCHEMA,
    )

    # ---- rejects: line-level + row-level, in line order
    pidx = np.flatnonzero(pre_rej)
    ridx = np.flatnonzero(~valid)
    rej_line = np.concatenate([pidx, gidx[ridx]]).astype(np.int64)
    rej_text = line_rej.text(pidx) + rr.text(ridx)
    order = np.argsort(rej_line, kind="stable")
    rej_line = rej_line[order]
    rejects = pa.Table.from_arrays(
        [
            pa.array(rej_line + 1, pa.int64()),
            pa.array([rej_text[i] for i in order.tolist()], pa.string()),
            pa.array(_raw_text(data, starts[rej_line], ends[rej_line]), pa.string()),
        ],
        schema=REJECTS_SCHEMA,
    )
    return BatchRows(rows, rejects, int(n_lines), offset, offset + len(data), users=users,
                     parsed_hll=parsed if len(vidx) == m else parsed.take(vidx))


def _read_good_lines(
    data, buf, starts, raw_end, gidx, skip, ends, pre_rej, use_threads, layout: Layout = STANDARD
) -> pa.Table:
    """Arrow-parse exactly the good lines; row i of the result is line ``gidx[i]``."""
    n_good = len(gidx)
    if n_good == 0:
        return pa.table({n: pa.array([], pa.string()) for n in _NAMES})
    if not pre_rej.any() and not (skip & (ends > starts)).any():
        src = data  # fast path: only good lines and blank ones (Arrow skips those too)
    else:  # cut rejected lines (and a skipped header) out of the buffer
        mark = np.zeros(len(buf) + 1, dtype=np.int8)
        mark[starts[gidx]] += 1
        mark[raw_end[gidx]] -= 1
        keep = np.cumsum(mark[:-1], dtype=np.int8).astype(bool)
        src = buf[keep].tobytes()
    if not src.endswith(b"\n"):
        src += b"\n"
    names = _NAMES if layout.index == STANDARD.index and layout.fields == 4 else [
        f"f{i}" for i in range(layout.fields)]
    ropts = pacsv.ReadOptions(
        column_names=names,
        use_threads=use_threads,
        block_size=max(1 << 20, min(len(src) // 4 + 1, 16 << 20)),
    )
    popts = pacsv.ParseOptions(
        delimiter=",",
        quote_char=False,
        double_quote=False,
        escape_char=False,
        newlines_in_values=False,
        ignore_empty_lines=True,
    )
    copts = pacsv.ConvertOptions(
        column_types={n: pa.string() for n in names},
        include_columns=[names[i] for i in layout.index],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
        check_utf8=False,
    )
    try:
        table = pacsv.read_csv(
            pa.py_buffer(src), read_options=ropts, parse_options=popts, convert_options=copts
        )
    except pa.ArrowInvalid:
        table = None
    if table is None or table.num_rows != n_good:
        return _python_split(data, starts[gidx], ends[gidx], layout)
    return table.rename_columns(_NAMES)


# ------------------------------------------------------------------- public


def first_hll_params(lines: bytes, layout: Layout = STANDARD) -> int | None:
    """Params code of the first valid hll in CSV ``lines`` (no header), or None.

    A Python loop that stops at the first valid value: on a real file that is
    the first line. Used by planning to fix the file's params once.
    """
    for line in lines.split(b"\n"):
        fields = line.rstrip(b"\r").split(b",")
        if len(fields) != layout.fields or not fields[layout.guid]:
            continue
        try:
            text = fields[layout.index[3]].decode("ascii").strip().strip('"').strip()
        except UnicodeDecodeError:
            continue
        text = text[1:] if text.startswith("\\\\") else text
        text = text[2:] if text[:2] in ("\\x", "\\X") else text
        if len(text) % 2 or text[:1].isspace():
            continue
        try:
            blob = bytes.fromhex(text)
        except ValueError:
            continue
        insp = hll.inspect_many(pa.array([blob], pa.binary()))
        if bool(insp.ok[0]) and int(insp.storage_type[0]) not in (hll.EMPTY, hll.UNDEFINED):
            return int(insp.params[0])
    return None


def check_unchanged(path: str | Path, expect: tuple[int, int, str], fh=None) -> None:
    """Raise :class:`InputError` unless ``path`` still has the planned size, mtime and fingerprint.

    ``expect`` = ``(size, mtime_ns, fingerprint)`` of the plan. A replaced or
    rewritten file changes its mtime (or size, or ends), an appended one its
    size: either way the run stops before a batch of the new version mixes
    with batches of the planned one.
    """
    size, mtime_ns, fp = expect
    try:
        st = os.fstat(fh.fileno()) if fh is not None else os.stat(path)
        now_fp = None
        if (st.st_size, st.st_mtime_ns) == (size, mtime_ns):
            now_fp = (fingerprint_fd(fh.fileno(), st.st_size) if fh is not None
                      else file_fingerprint(path, st.st_size))
    except OSError as exc:
        raise InputError(f"cannot read input file {path}: {exc}") from exc
    if (st.st_size, st.st_mtime_ns) != (size, mtime_ns) or now_fp != fp:
        what = "grew" if st.st_size > size else ("shrank" if st.st_size < size else "was rewritten")
        raise InputError(
            f"{path} changed during the run ({what}: {st.st_size} bytes now, {size} when planned); "
            "nothing was published — run the same command again once the file is complete"
        )


def read_batch(
    path: str | Path,
    start: int,
    end: int,
    expected_fingerprint: str | None = None,
    *,
    use_threads: bool = True,
    expect: tuple[int, int, str] | None = None,
    hll_params: int | None = None,
) -> BatchRows:
    """Read and validate the byte range ``[start, end)`` of a userdays CSV.

    ``start`` must be a line start (a plan boundary); a range starting at 0
    skips the header line (BOM tolerated) but counts it as line 1. Row-level
    damage becomes a reject of that line; blank lines are skipped (counted in
    ``n_lines``). Raises :class:`InputError` when the file changed since
    planning (``expect`` = planned size, mtime_ns, fingerprint: checked on the
    open file before and after the read; or ``expected_fingerprint`` alone) or
    a user's rows are not together (naming two lines). ``hll_params``: the
    file's params code (see :func:`parse_bytes`).
    """
    path = Path(path)
    if start < 0 or end < start:
        raise ValueError(f"bad byte range [{start}, {end})")
    if expected_fingerprint is not None:
        try:
            fp = file_fingerprint(path)
        except OSError as exc:
            raise InputError(f"cannot read input file {path}: {exc}") from exc
        if fp != expected_fingerprint:
            raise InputError(
                f"{path} changed since it was planned (fingerprint {fp}, planned {expected_fingerprint}); plan it again"
            )
    layout = read_layout(path)[1]
    try:
        with open(path, "rb") as fh:
            if expect is not None:
                check_unchanged(path, expect, fh)
            fh.seek(start)
            data = fh.read(end - start)
            if expect is not None:
                check_unchanged(path, expect, fh)
    except OSError as exc:
        raise InputError(f"cannot read input file {path}: {exc}") from exc
    try:
        return parse_bytes(data, offset=start, skip_header=start == 0, use_threads=use_threads,
                           hll_params=hll_params, layout=layout)
    except _Split as exc:
        raise split_user_error(path, exc.guid, exc.offsets) from None


def _user_range(fh, size: int, header_end: int, guid: bytes,
                layout: Layout = STANDARD) -> tuple[int, int]:
    """Byte range of ``guid``'s lines in a sorted file by binary search on offsets.

    Returns ``(start, end)``; an empty range (start == end) when the user is absent.
    Reads O(log(size)) small chunks plus the user's own lines.
    """
    from homeloc_assets.inputs.plan import _Scanner, _sort_key

    sc = _Scanner(fh, size, layout)

    def lines_from(p: int) -> Iterator[tuple[int, bytes]]:
        """(line start, first field) of the non-blank lines from line start ``p`` on."""
        buf, at = b"", p
        while p < size:
            nl = buf.find(b"\n", p - at)
            if nl < 0 and at + len(buf) < size:
                buf = buf[p - at :] + sc.read(at + len(buf), max(8192, len(buf)))
                at = p
                continue
            stop = at + len(buf) if nl < 0 else at + nl
            line = buf[p - at : stop - at]
            # damaged lines (repeated header, wrong field count, ...) are
            # transparent to the search, as to the planner and the reader
            key = _sort_key(line, layout) if line.strip(b"\r \t") else None
            if key is not None:
                yield p, key.strip(b'"')
            p = stop + 1

    def lower_bound(strict: bool) -> int:
        """First line start whose guid is >= guid (> guid if strict), or size."""

        def above(g: bytes) -> bool:
            return g > guid if strict else g >= guid

        lo, hi = header_end, size  # lines before lo are below; the line at hi is above
        while hi - lo > 65536:
            m = sc.next_line_start((lo + hi) // 2, header_end)
            if m >= hi:
                break
            first = next(lines_from(m), None)
            if first is None or above(first[1]):
                hi = m
            else:
                lo = m
        for p, g in lines_from(lo):
            if p >= hi or above(g):
                return min(p, hi)
        return hi

    return lower_bound(False), lower_bound(True)


def _scan_user_range(fh, size: int, header_end: int, guid: bytes, layout: Layout) -> tuple[int, int]:
    """Byte range of ``guid``'s (contiguous) lines found by one forward scan, 16 MiB at a time."""
    from homeloc_assets.inputs.plan import _first_field

    pos, tail, chunk = header_end, b"\n", 16 << 20
    start = -1
    while pos < size:
        fh.seek(pos)
        data = tail + fh.read(chunk)
        last = pos + chunk >= size
        lines = data.split(b"\n")
        at = pos - len(tail)
        for i, line in enumerate(lines if last else lines[:-1]):
            first = _first_field(line, layout).strip(b'"') if line.strip(b"\r \t") else None
            if start < 0 and i > 0 and first == guid:
                start = at
            elif start >= 0 and first is not None and first != guid:
                return start, at
            at += len(line) + 1
        if last:
            break
        tail = b"\n" + lines[-1]
        pos += chunk
    return (start, size) if start >= 0 else (header_end, header_end)


def find_user(path: str | Path, user_guid: str, *, global_lines: bool = False) -> BatchRows:
    """Rows and rejects of one user: binary search in a byte-ordered file, else one scan.

    ``line`` is relative to the user's first line (``BatchRows.start`` is its
    byte offset); with ``global_lines=True`` the file before it is scanned for
    line ends once and ``line`` becomes the global 1-based line number (header
    = line 1). An absent user gives empty tables.
    """
    path = Path(path)
    header_end, layout = read_layout(path)
    size = path.stat().st_size
    guid = str(user_guid).encode("utf-8")
    with open(path, "rb") as fh:
        start, end = _user_range(fh, size, header_end, guid, layout)
        if end <= start:  # not in byte order (users grouped in any order): one scan
            start, end = _scan_user_range(fh, size, header_end, guid, layout)
    if end <= start:
        return BatchRows(ROWS_SCHEMA.empty_table(), REJECTS_SCHEMA.empty_table(), 0, start, start)
    res = read_batch(path, start, end)
    if not global_lines:
        return res
    base = _count_newlines(path, start)
    rows = res.rows.set_column(4, "line", pc.add(res.rows.column("line"), base))
    rej = res.rejects.set_column(0, "line", pc.add(res.rejects.column("line"), base))
    return BatchRows(rows, rej, res.n_lines, res.start, res.end, base)
