"""Validation of a whole column of hlls at once (:func:`inspect_many`), and its parsed form.

:func:`_parse` reads every row's header and checks sizes, explicit values,
sparse entries and FULL registers like postgresql-hll 2.16 does, with numpy
over the flat Arrow data buffer (a Python loop only over failing rows, to
word their reasons).  Its :class:`_Parsed` result is what ``_vector``'s
grouped union works on: the explicit values, the sparse entries per params
code and the FULL rows per params code, unpacked once.

Params code (``InspectResult.params``): header bytes 1 and 2 as
``(byte1 << 8) | byte2`` where byte1 = (regwidth-1) << 5 | log2m and
byte2 = sparseon << 6 | expthresh code; -1 for rows whose header is invalid.
Decode it with :func:`params_of_code`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from ._format import (
    EMPTY,
    EXPLICIT,
    FULL,
    MSE_NELEM_MAX,
    SPARSE,
    TYPE_NAMES,
    UNDEFINED,
    HLLError,
    Params,
    params_from_header,
)
from ._hex import arrow_buffers

__all__ = ["InspectResult", "ParsedColumn", "inspect_many", "params_of_code", "parse_many"]

Ints = npt.NDArray[np.int64]
Bytes = npt.NDArray[np.uint8]
Mask = npt.NDArray[np.bool_]
Floats = npt.NDArray[np.float64]
Reasons = npt.NDArray[np.object_]
_NO_ROWS = np.zeros(0, np.int64)


def params_of_code(code: int) -> Params:
    """Inverse of the params code of :func:`inspect_many` (raises HLLError for -1/garbage)."""
    code = int(code)
    if not 0 <= code <= 0xFFFF:
        raise HLLError(f"invalid params code {code}")
    return params_from_header(code >> 8, code & 0xFF, registers=False)


def _flat(arr: object, binary: bool) -> tuple[Bytes, Ints, Mask]:
    """(data, offsets [n+1], not null) of a (chunked) Arrow binary/string array or a sequence."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if not isinstance(arr, pa.Array):
        arr = pa.array(
            [None if v is None else bytes(v) for v in arr] if binary else list(arr),
            type=pa.large_binary() if binary else pa.large_string(),
        )
    if binary and pa.types.is_string(arr.type):
        arr = arr.cast(pa.binary())
    elif binary and pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.large_binary())
    return arrow_buffers(arr)


@dataclass(frozen=True)
class InspectResult:
    """Per-row validation of a column of hlls (see module docstring for ``params``)."""

    ok: Mask
    reason: Reasons  # None where ok
    params: npt.NDArray[np.int32]  # params code, -1 where the header is invalid
    storage_type: npt.NDArray[np.int8]  # -1 where unknown


@dataclass
class _Parsed:
    """A column of hlls, validated, with the contents of its valid rows unpacked by type."""

    n: int
    data: Bytes
    padded: Bytes  # data + 8 zero bytes (safe over-reads)
    start: Ints
    length: Ints
    valid: Mask  # not null
    ok: Mask
    reason: Reasons
    code: npt.NDArray[np.int32]  # params code per row
    stype: npt.NDArray[np.int8]  # storage type per row
    # explicit values of EXPLICIT rows with elements (as checked): rows ``x_rows``
    # (ascending), their values ``x_values[x_offsets[i]:x_offsets[i+1]]`` (ascending)
    x_rows: Ints
    x_offsets: Ints
    x_values: Ints
    # sparse entries of SPARSE rows with entries (as checked): rows ``s_rows``
    # (ordered by params code, then row), entries ``s_index/s_value[s_offsets[i]:s_offsets[i+1]]``;
    # ``s_segments[code] = (lo, hi)``: the rows ``s_rows[lo:hi]`` have that code
    s_rows: Ints
    s_offsets: Ints
    s_index: npt.NDArray[np.integer]
    s_value: Bytes
    s_segments: dict[int, tuple[int, int]]
    # FULL rows (ok) per params code; registers are unpacked on demand
    full_rows: dict[int, Ints]
    arr: pa.Array  # zero-copy large_binary view of (data, offsets), for payload copies
    #: row of ``arr`` of each row (None: the same row), set by :meth:`take`
    arr_rows: Ints | None = None

    def _arr(self, rows: Ints) -> Ints:
        return rows if self.arr_rows is None else self.arr_rows[rows]

    def payloads(self, rows: Ints) -> Bytes:
        """Concatenated payloads (bytes after the 3-byte header) of ``rows``, as uint8."""
        return _payloads(self.arr, self._arr(rows))

    def values(self, rows: Ints) -> pa.Array:
        """The bytes of ``rows`` (large_binary)."""
        return self.arr.take(pa.array(self._arr(np.asarray(rows, np.int64)), pa.int64()))

    def inspect(self) -> InspectResult:
        """The per-row verdicts, as :func:`inspect_many` gives them."""
        return InspectResult(self.ok, self.reason, self.code, self.stype)

    def take(self, rows: object) -> _Parsed:
        """The parsed column of the rows ``rows`` (any order, repeats allowed), not re-read.

        Same as parsing the bytes of those rows again: the unpacked explicit values,
        sparse entries and FULL rows of the chosen rows are gathered, nothing is checked
        again (the data buffer is shared).
        """
        rows = np.asarray(rows, np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.n):
            raise HLLError(f"take: row out of range [0, {self.n})")
        # explicit rows: new rows in ascending order, values gathered
        x_at = np.full(self.n, -1, np.int64)
        x_at[self.x_rows] = np.arange(len(self.x_rows))
        x_old = x_at[rows]
        x_rows = np.flatnonzero(x_old >= 0)
        x_old = x_old[x_rows]
        x_offsets, at = _gather(self.x_offsets, x_old)
        x_values = self.x_values[at]
        # sparse rows: by params code (the old segments' order), then new row
        s_at = np.full(self.n, -1, np.int64)
        s_at[self.s_rows] = np.arange(len(self.s_rows))
        s_old = s_at[rows]
        s_rows = np.flatnonzero(s_old >= 0)
        s_old = s_old[s_rows]
        segments: dict[int, tuple[int, int]] = {}
        by_lo = sorted(self.s_segments.items(), key=lambda kv: kv[1])
        if len(by_lo) == 1 and len(s_old):
            segments[by_lo[0][0]] = (0, len(s_old))
        elif len(by_lo) > 1:
            seg = np.searchsorted(np.array([lo for _, (lo, _) in by_lo]), s_old, side="right") - 1
            order = np.argsort(seg, kind="stable")
            s_rows, s_old, seg = s_rows[order], s_old[order], seg[order]
            cut = np.searchsorted(seg, np.arange(len(by_lo) + 1))
            for k, (c, _) in enumerate(by_lo):
                if cut[k + 1] > cut[k]:
                    segments[c] = (int(cut[k]), int(cut[k + 1]))
        s_offsets, at = _gather(self.s_offsets, s_old)
        s_index, s_value = self.s_index[at], self.s_value[at]
        full = {}
        for c, old in self.full_rows.items():
            is_full = np.zeros(self.n, bool)
            is_full[old] = True
            new = np.flatnonzero(is_full[rows])
            if len(new):
                full[c] = new
        return _Parsed(
            len(rows), self.data, self.padded, self.start[rows], self.length[rows],
            self.valid[rows], self.ok[rows], self.reason[rows], self.code[rows], self.stype[rows],
            x_rows, x_offsets, x_values, s_rows, s_offsets, s_index, s_value, segments, full,
            self.arr, self._arr(rows),
        )


    def x_value_rows(self) -> Ints:
        """Row of every explicit value."""
        return np.repeat(self.x_rows, np.diff(self.x_offsets))

    def sparse_segment(self, code: int) -> tuple[int, int]:
        """``(lo, hi)``: the SPARSE rows ``s_rows[lo:hi]`` of params ``code``."""
        return self.s_segments.get(code, (0, 0))


def _gather(offsets: Ints, parts: Ints) -> tuple[Ints, Ints]:
    """``(offsets, positions)``: the new offsets and the value positions of the parts
    ``parts`` (in that order) of a CSR array with ``offsets``."""
    count = offsets[parts + 1] - offsets[parts]
    new = np.zeros(len(parts) + 1, np.int64)
    np.cumsum(count, out=new[1:])
    return new, _ranges(offsets[parts], count)


def _payloads(arr: pa.Array, rows: Ints) -> Bytes:
    if not len(rows):
        return np.zeros(0, np.uint8)
    # Arrow copies whole values (memcpy), far cheaper than a per-byte numpy gather
    sl = pc.binary_slice(arr.take(pa.array(rows, pa.int64())), 3, 1 << 20)  # hlls are < 2**20 bytes
    bufs = sl.buffers()
    off = np.frombuffer(bufs[1], np.int64)[sl.offset : sl.offset + len(sl) + 1]
    return np.frombuffer(bufs[2], np.uint8)[off[0] : off[-1]]


class _Verdicts:
    """Per row: ok so far, and the reason of the first check it failed."""

    def __init__(self, not_null: Mask) -> None:
        self.ok = not_null.copy()
        self.reason: Reasons = np.full(len(not_null), None, dtype=object)
        self.reason[~not_null] = "null"

    def fail(self, mask: Mask, msg: str | Callable[[int], str]) -> None:
        """Mark the rows of ``mask`` failing (first reason wins); ``msg``: str or row -> str."""
        rows = np.flatnonzero(mask & self.ok)
        for r in rows:
            self.reason[r] = msg(r) if callable(msg) else msg
        self.ok[rows] = False

    def fail_rows(self, rows: Ints, msg: str | Callable[[int], str]) -> None:
        """Like :meth:`fail` for row numbers."""
        mask = np.zeros(len(self.ok), bool)
        mask[rows] = True
        self.fail(mask, msg)


def _ranges(first: Ints, count: Ints, step: int = 1) -> Ints:
    """Concatenation of ``first[i] + step * arange(count[i])`` over i (int64)."""
    count = np.asarray(count, dtype=np.int64)
    total = int(count.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    newfirst = np.cumsum(count) - count
    out = np.repeat(np.asarray(first, dtype=np.int64) - step * newfirst, count)
    out += np.arange(0, step * total, step, dtype=np.int64)
    return out


def _rows_of(offsets: Ints, pos: Ints) -> Ints:
    """Index i with offsets[i] <= pos < offsets[i+1] for entry positions ``pos``."""
    return np.searchsorted(offsets, pos, side="right") - 1


def _not_ascending(values: npt.NDArray[np.integer], offsets: Ints) -> Ints:
    """Positions i (into ``values``) where ``values[i + 1] <= values[i]`` inside one row."""
    bad = values[1:] <= values[:-1]
    bad[offsets[1:-1] - 1] = False  # pairs across row boundaries
    return np.flatnonzero(bad)


def _decode_sparse(
    arr: pa.Array, rows: Ints, padded: Bytes, payload_start: Ints, n_entries: Ints,
    log2m: int, regwidth: int,
) -> tuple[npt.NDArray[np.integer], Bytes]:
    """(register index, value) of all entries of SPARSE payloads at ``payload_start``."""
    chunk = log2m + regwidth
    if chunk <= 16 and chunk % 8 == 0:  # e.g. the default 11/5: entries are big-endian uint16
        fields = np.frombuffer(_payloads(arr, rows), ">u2" if chunk == 16 else np.uint8).astype(np.uint16)
        value = (fields & np.uint16((1 << regwidth) - 1)).astype(np.uint8)
        fields >>= np.uint16(regwidth)
        return fields, value
    bitpos = _ranges(payload_start * 8, n_entries, chunk)
    view4 = np.ndarray(shape=(len(padded) - 3,), dtype=">u4", buffer=padded, strides=(1,))
    word = view4[bitpos >> 3].astype(np.int64)
    fields = ((word >> (32 - chunk - (bitpos & 7))) & ((1 << chunk) - 1)).astype(np.int32)
    return fields >> regwidth, (fields & ((1 << regwidth) - 1)).astype(np.uint8)


# ---------------------------------------------------------------- validation


@dataclass
class _Headers:
    """The 3-byte headers of a column, as read (for sizes) and as validated."""

    stype: Ints  # storage type as read, 0..15
    regwidth: Ints  # as read, capped at 7 (the sizes of rows failing the range check are moot)
    log2m: Ints  # as read, capped at 17
    code: npt.NDArray[np.int32]  # params code, -1 where the header is invalid
    known_stype: npt.NDArray[np.int8]  # storage type, -1 where the header is invalid


def _read_headers(v: _Verdicts, padded: Bytes, start: Ints, length: Ints) -> _Headers:
    v.fail(length < 3, lambda r: f"truncated hll: {int(length[r])} bytes, the header needs 3")
    byte0 = padded[start].astype(np.int64)
    byte1 = padded[start + 1].astype(np.int64)
    byte2 = padded[start + 2].astype(np.int64)
    version, stype = byte0 >> 4, byte0 & 15
    v.fail(version != 1, lambda r: f"unknown hll schema version {int(version[r])}")
    v.fail(stype > 4, lambda r: f"unknown hll type {int(stype[r])}")
    regwidth = (byte1 >> 5) + 1
    log2m = byte1 & 31
    # as postgresql-hll 2.16: parameters matter only for values with registers; the
    # reserved bit of byte 2 is ignored (see _format.params_from_header)
    has_registers = (stype == FULL) | (stype == SPARSE)
    v.fail(has_registers & (regwidth > 7),
           lambda r: f"regwidth {int(regwidth[r])} out of range: must be between 1 and 7")
    v.fail(has_registers & (log2m > 17),
           lambda r: f"log2m {int(log2m[r])} out of range: must be between 0 and 17")
    header_ok = v.ok.copy()
    return _Headers(
        stype=stype,
        regwidth=np.minimum(regwidth, 7),
        log2m=np.minimum(log2m, 17),
        code=np.where(header_ok, (byte1 << 8) | (byte2 & 0x7F), -1).astype(np.int32),
        known_stype=np.where(header_ok, stype, -1).astype(np.int8),
    )


@dataclass
class _Sizes:
    """What the payload size of each row says (0 for rows of other types)."""

    payload: Ints  # bytes after the header
    n_elements: Ints  # EXPLICIT: values
    n_entries: Ints  # SPARSE: entries
    entry_bits: Ints  # SPARSE: bits per entry (log2m + regwidth)


def _check_sizes(v: _Verdicts, h: _Headers, length: Ints) -> _Sizes:
    st = h.stype
    payload = length - 3
    v.fail(((st == UNDEFINED) | (st == EMPTY)) & (length != 3),
           lambda r: f"{TYPE_NAMES[int(st[r])]} hll must be exactly 3 bytes, got {int(length[r])}")
    is_explicit = st == EXPLICIT
    v.fail(is_explicit & (payload % 8 != 0),
           lambda r: f"truncated EXPLICIT value: {int(length[r])} bytes")
    n_elements = np.where(is_explicit, payload // 8, 0)
    v.fail(is_explicit & (n_elements > MSE_NELEM_MAX),
           lambda r: f"EXPLICIT hll with {int(n_elements[r])} values is too large (at most {MSE_NELEM_MAX})")
    full_bytes = (h.regwidth * np.left_shift(1, h.log2m) + 7) // 8
    v.fail((st == FULL) & (payload != full_bytes),
           lambda r: f"wrong FULL size: {int(length[r])} bytes, expected {3 + int(full_bytes[r])}")
    is_sparse = st == SPARSE
    entry_bits = h.log2m + h.regwidth
    n_entries = np.where(is_sparse, (payload * 8) // entry_bits, 0)
    v.fail(is_sparse & (payload * 8 - n_entries * entry_bits >= 8),
           lambda r: f"wrong SPARSE size: {int(length[r])} bytes")
    return _Sizes(payload, n_elements, n_entries, entry_bits)


def _explicit_values(
    v: _Verdicts, arr: pa.Array, is_explicit: Mask, n_elements: Ints
) -> tuple[Ints, Ints, Ints]:
    """(rows, offsets, values) of the EXPLICIT rows with values; unsorted rows fail."""
    rows = np.flatnonzero(v.ok & is_explicit & (n_elements > 0))
    offsets = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(n_elements[rows], out=offsets[1:])
    if not len(rows):
        return rows, offsets, np.zeros(0, np.int64)
    values = np.frombuffer(_payloads(arr, rows), ">i8").astype(np.int64)
    bad = _not_ascending(values, offsets)
    if len(bad):
        v.fail_rows(rows[_rows_of(offsets, bad)],
                    "EXPLICIT values are not strictly ascending (duplicate or unsorted elements)")
    return rows, offsets, values


@dataclass
class _SparseEntries:
    rows: Ints
    offsets: Ints
    index: npt.NDArray[np.integer]
    value: Bytes
    segments: dict[int, tuple[int, int]]


def _sparse_entries(
    v: _Verdicts, arr: pa.Array, padded: Bytes, start: Ints, code: npt.NDArray[np.int32],
    is_sparse: Mask, n_entries: Ints,
) -> _SparseEntries:
    """The entries of the SPARSE rows with entries, decoded per params code, then checked."""
    rows = np.flatnonzero(v.ok & is_sparse & (n_entries > 0))
    if not len(rows):
        return _SparseEntries(rows, np.zeros(1, np.int64), np.zeros(0, np.int32),
                              np.zeros(0, np.uint8), {})
    row_code = code[rows]
    if row_code.min() != row_code.max():
        rows = rows[np.argsort(row_code, kind="stable")]
        row_code = code[rows]
    count = n_entries[rows]
    offsets = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(count, out=offsets[1:])
    cuts = np.flatnonzero(row_code[1:] != row_code[:-1]) + 1
    bounds = [0, *cuts.tolist(), len(rows)]
    segments: dict[int, tuple[int, int]] = {}
    index_parts, value_parts = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        c = int(row_code[lo])
        segments[c] = (lo, hi)
        p = params_of_code(c)
        index, value = _decode_sparse(arr, rows[lo:hi], padded, start[rows[lo:hi]] + 3,
                                      count[lo:hi], p.log2m, p.regwidth)
        index_parts.append(index)
        value_parts.append(value)
    s = _SparseEntries(
        rows, offsets,
        index_parts[0] if len(index_parts) == 1 else np.concatenate(index_parts),
        value_parts[0] if len(value_parts) == 1 else np.concatenate(value_parts),
        segments,
    )
    _check_sparse_entries(v, s)
    return s


def _check_sparse_entries(v: _Verdicts, s: _SparseEntries) -> None:
    zero = np.flatnonzero(s.value == 0)
    if len(zero):
        v.fail_rows(s.rows[_rows_of(s.offsets, zero)], "SPARSE entry with register value 0")
    bad = _not_ascending(s.index, s.offsets)
    if len(bad):
        v.fail_rows(s.rows[_rows_of(s.offsets, bad + 1)],
                    "SPARSE register indices not strictly ascending")
    for c, (lo, hi) in s.segments.items():
        p = params_of_code(c)
        if p.max_register >= (1 << p.regwidth) - 1:
            continue  # no stored value can exceed it
        e0, e1 = int(s.offsets[lo]), int(s.offsets[hi])
        over = np.flatnonzero(s.value[e0:e1] > p.max_register) + e0
        if len(over):

            def msg(r: int, p: Params = p) -> str:
                i = int(np.flatnonzero(s.rows == r)[0])
                return (
                    f"register value {int(s.value[s.offsets[i] : s.offsets[i + 1]].max())} "
                    f"out of range for regwidth {p.regwidth} (max {p.max_register})"
                )

            v.fail_rows(s.rows[_rows_of(s.offsets, over)], msg)


def _check_sparse_padding(
    v: _Verdicts, padded: Bytes, start: Ints, length: Ints, is_sparse: Mask, sizes: _Sizes
) -> None:
    rows = np.flatnonzero(v.ok & is_sparse & (sizes.payload > 0))
    pad_bits = sizes.payload[rows] * 8 - sizes.n_entries[rows] * sizes.entry_bits[rows]
    last_byte = padded[start[rows] + length[rows] - 1].astype(np.int64)
    v.fail_rows(rows[(last_byte & ((1 << np.clip(pad_bits, 0, 7)) - 1)) != 0],
                "nonzero padding bits in SPARSE hll")


def _full_rows(
    v: _Verdicts, padded: Bytes, start: Ints, length: Ints, code: npt.NDArray[np.int32],
    is_full: Mask,
) -> dict[int, Ints]:
    """The valid FULL rows per params code; bad padding and too large registers fail."""
    full: dict[int, Ints] = {}
    candidates = np.flatnonzero(v.ok & is_full)
    for c in np.unique(code[candidates]):
        rows = candidates[code[candidates] == c]
        p = params_of_code(int(c))
        pad_bits = 8 * ((p.regwidth * p.nregs + 7) // 8) - p.regwidth * p.nregs
        if pad_bits:
            last_bits = padded[start[rows] + length[rows] - 1] & ((1 << pad_bits) - 1)
            v.fail_rows(rows[last_bits != 0], "nonzero padding bits in FULL hll")
        if p.max_register < (1 << p.regwidth) - 1 and p.nregs:
            live = rows[v.ok[rows]]
            largest = np.zeros(len(live), np.uint8)
            step = max(1, (1 << 22) // p.nregs)
            for a in range(0, len(live), step):
                largest[a : a + step] = _unpack_full(padded, start[live[a : a + step]] + 3, p).max(axis=1)
            v.fail_rows(
                live[largest > p.max_register],
                lambda r, p=p, live=live, largest=largest: (
                    f"register value {int(largest[live == r][0])} out of range for "
                    f"regwidth {p.regwidth} (max {p.max_register})"
                ),
            )
        full[int(c)] = rows[v.ok[rows]]
    return full


def _parse(blobs: object) -> _Parsed:
    data, offsets, not_null = _flat(blobs, binary=True)
    n = len(offsets) - 1
    start = offsets[:-1]
    length = offsets[1:] - start
    padded = np.concatenate([data, np.zeros(8, np.uint8)])
    arr = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )
    v = _Verdicts(not_null)
    h = _read_headers(v, padded, start, length)
    sizes = _check_sizes(v, h, length)
    is_sparse = h.stype == SPARSE
    x_rows, x_offsets, x_values = _explicit_values(v, arr, h.stype == EXPLICIT, sizes.n_elements)
    sparse = _sparse_entries(v, arr, padded, start, h.code, is_sparse, sizes.n_entries)
    _check_sparse_padding(v, padded, start, length, is_sparse, sizes)
    full = _full_rows(v, padded, start, length, h.code, h.stype == FULL)
    return _Parsed(
        n, data, padded, start, length, not_null, v.ok, v.reason, h.code, h.known_stype,
        x_rows, x_offsets, x_values,
        sparse.rows, sparse.offsets, sparse.index, sparse.value, sparse.segments,
        full, arr,
    )


def _unpack_full(padded: Bytes, payload_start: Ints, p: Params) -> Bytes:
    """Registers of FULL rows (payloads at ``payload_start``) as a (rows, nregs) uint8 matrix."""
    w, nregs = p.regwidth, p.nregs
    bit = np.arange(nregs, dtype=np.int64) * w
    byte = bit >> 3
    shift = (16 - w - (bit & 7)).astype(np.uint16)
    out = np.empty((len(payload_start), nregs), dtype=np.uint8)
    step = max(1, (1 << 22) // max(nregs, 1))
    for a in range(0, len(payload_start), step):
        at = payload_start[a : a + step, None] + byte[None, :]
        two = (padded[at].astype(np.uint16) << 8) | padded[at + 1]
        out[a : a + step] = (two >> shift) & ((1 << w) - 1)
    return out


def inspect_many(blobs: object) -> InspectResult:
    """Validate many hlls at once (Arrow binary array or sequence of bytes)."""
    return parse_many(blobs).inspect()


#: a column of hlls read and validated once (:func:`parse_many`); the grouped functions
#: of ``_vector`` take it in place of the bytes, :meth:`ParsedColumn.take` selects rows
ParsedColumn = _Parsed


def parse_many(blobs: object) -> ParsedColumn:
    """Read and validate many hlls once, for :func:`inspect_many`-like verdicts
    (:meth:`ParsedColumn.inspect`) and grouped unions of any of its rows without a new parse."""
    if isinstance(blobs, _Parsed):
        return blobs
    return _parse(blobs)
