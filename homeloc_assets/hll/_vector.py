"""Vectorised batch functions over many hlls (the pipeline's hot path).

Owns: hex decoding of a whole column (:func:`unhex_many`), validation of a
whole column (:func:`inspect_many`), and ``hll_union_agg ... GROUP BY`` with
its cardinality (:func:`grouped_cardinality`, :func:`grouped_union`).  All
work is numpy over the flat Arrow data buffer, split by storage type; there
is no per-row Python loop over valid rows (only over failing rows to build
messages, and over compressed result groups in ``grouped_union`` to build
their bytes).

Semantics follow ``_ops`` (PostgreSQL's): per group, NULL rows are skipped;
an UNDEFINED input makes the union UNDEFINED (cardinality NaN, like NULL);
EXPLICIT inputs union as sets and stay EXPLICIT (exact count) while the
union has at most the explicit threshold elements; any SPARSE/FULL input or a
larger union gives registers (max per register) and the estimator.

Params code (``InspectResult.params``): header bytes 1 and 2 as
``(byte1 << 8) | byte2`` where byte1 = (regwidth-1) << 5 | log2m and
byte2 = sparseon << 6 | expthresh code; -1 for rows whose header is invalid.
Decode it with :func:`params_of_code`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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
    choose_compressed_type,
    encode_compressed,
    params_from_header,
)
from ._ops import POW2_NEG, estimate_from_sums, rho_and_index

__all__ = [
    "InspectResult",
    "unhex_many",
    "inspect_many",
    "params_of_code",
    "grouped_cardinality",
    "grouped_union",
]

_HEXLUT = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEXLUT[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEXLUT[_c] = 10 + _i


def params_of_code(code: int) -> Params:
    """Inverse of the params code of :func:`inspect_many` (raises HLLError for -1/garbage)."""
    code = int(code)
    if not 0 <= code <= 0xFFFF:
        raise HLLError(f"invalid params code {code}")
    return params_from_header(code >> 8, code & 0xFF)


def _flat(arr: object, binary: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(data uint8, offsets int64 [n+1], valid bool) of a (chunked) Arrow binary/string array."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if not isinstance(arr, pa.Array):
        arr = pa.array(
            [None if v is None else bytes(v) for v in arr] if binary else list(arr),
            type=pa.large_binary() if binary else pa.large_string(),
        )
    t = arr.type
    if binary and pa.types.is_string(t):
        arr = arr.cast(pa.binary())
    elif binary and pa.types.is_large_string(t):
        arr = arr.cast(pa.large_binary())
    t = arr.type
    large = pa.types.is_large_binary(t) or pa.types.is_large_string(t)
    if not (large or pa.types.is_binary(t) or pa.types.is_string(t)):
        raise HLLError(f"expected a binary or string Arrow array, got {t}")
    n = len(arr)
    bufs = arr.buffers()
    off = np.frombuffer(bufs[1], dtype=np.int64 if large else np.int32)[arr.offset : arr.offset + n + 1]
    off = off.astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    if n:
        data = data[off[0] : off[-1]]
        off = off - off[0]
    if arr.null_count:
        valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    else:
        valid = np.ones(n, dtype=bool)
    return data, off, valid


def unhex_many(values: object) -> tuple[pa.Array, np.ndarray]:
    """Decode a column of PostgreSQL bytea hex texts (``\\x..``) at once.

    Surrounding ASCII whitespace is stripped.  Rows that are null, lack the
    ``\\x`` prefix, have an odd number of digits or a non-hex character get
    ok=False and a null output.  Returns (pyarrow.LargeBinaryArray, ok).
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if not isinstance(values, pa.Array):
        values = pa.array(list(values), type=pa.large_string())
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        raise HLLError(f"unhex_many expects a string array, got {values.type}")
    values = pc.utf8_trim_whitespace(values).cast(pa.large_string())
    data, off, valid = _flat(values, binary=False)
    n = len(off) - 1
    if n == 0:
        return pa.array([], type=pa.large_binary()), np.zeros(0, bool)
    start, end = off[:-1], off[1:]
    length = end - start
    dpad = np.concatenate([data, np.zeros(2, np.uint8)])
    prefix = (length >= 2) & (dpad[start] == ord("\\")) & ((dpad[start + 1] | 0x20) == ord("x"))
    ok = valid & prefix & (length % 2 == 0)
    bad = (_HEXLUT[data] == 255).astype(np.int64)
    cum = np.concatenate([[0], np.cumsum(bad)])
    hs = np.minimum(start + 2, end)
    ok &= (cum[end] - cum[hs]) == 0
    olen = np.where(ok, (length - 2) // 2, 0)
    keep_rows = np.repeat(ok, length)
    pos_in_row = np.arange(len(data)) - np.repeat(start, length)
    keep = keep_rows & (pos_in_row >= 2)
    hb = data[keep]
    out = (_HEXLUT[hb[0::2]] << 4) | _HEXLUT[hb[1::2]]
    ooff = np.concatenate([[0], np.cumsum(olen)]).astype(np.int64)
    validity = pa.py_buffer(np.packbits(ok, bitorder="little").tobytes())
    arr = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), n, [validity, pa.py_buffer(ooff.tobytes()), pa.py_buffer(out.astype(np.uint8).tobytes())]
    )
    return arr, ok


@dataclass(frozen=True)
class InspectResult:
    """Per-row validation of a column of hlls (see module docstring for ``params``)."""

    ok: np.ndarray  # bool
    reason: np.ndarray  # object: None where ok
    params: np.ndarray  # int32 params code, -1 where the header is invalid
    storage_type: np.ndarray  # int8, -1 where unknown


@dataclass
class _Parsed:
    n: int
    data: np.ndarray
    start: np.ndarray
    length: np.ndarray
    valid: np.ndarray  # not null
    ok: np.ndarray
    reason: np.ndarray
    code: np.ndarray
    stype: np.ndarray
    # explicit values (flat) and their row ids, for ok EXPLICIT rows
    ev: np.ndarray
    erow: np.ndarray
    # sparse entries (row, index, value) for ok SPARSE rows
    srow: np.ndarray
    sidx: np.ndarray
    sval: np.ndarray
    # full rows: per params code -> (rows, registers matrix)
    full: dict


def _fail(p_ok: np.ndarray, reason: np.ndarray, mask: np.ndarray, msg) -> None:
    """Mark rows failing (first reason wins); msg is a str or a callable(row) -> str."""
    rows = np.flatnonzero(mask & p_ok)
    for r in rows:
        reason[r] = msg(r) if callable(msg) else msg
    p_ok[rows] = False


def _parse(blobs: object) -> _Parsed:
    data, off, valid = _flat(blobs, binary=True)
    n = len(off) - 1
    start = off[:-1]
    length = off[1:] - start
    dpad = np.concatenate([data, np.zeros(8, np.uint8)])
    ok = valid.copy()
    reason = np.full(n, None, dtype=object)
    reason[~valid] = "null"
    _fail(ok, reason, length < 3, lambda r: f"truncated hll: {int(length[r])} bytes, the header needs 3")
    b0 = dpad[start].astype(np.int64)
    b1 = dpad[start + 1].astype(np.int64)
    b2 = dpad[start + 2].astype(np.int64)
    vers, st = b0 >> 4, b0 & 15
    _fail(ok, reason, vers != 1, lambda r: f"unknown hll schema version {int(vers[r])}")
    _fail(ok, reason, st > 4, lambda r: f"unknown hll type {int(st[r])}")
    w = (b1 >> 5) + 1
    m = b1 & 31
    _fail(ok, reason, w > 7, lambda r: f"regwidth {int(w[r])} out of range: must be between 1 and 7")
    _fail(ok, reason, m > 17, lambda r: f"log2m {int(m[r])} out of range: must be between 0 and 17")
    _fail(ok, reason, (b2 & 0x80) != 0, "reserved bit set in hll header")
    hdr_ok = ok.copy()
    code = np.where(hdr_ok, (b1 << 8) | b2, -1).astype(np.int32)
    stype = np.where(hdr_ok, st, -1).astype(np.int8)
    ecode = b2 & 63
    expth = np.where(ecode == 63, -1, np.where(ecode == 0, 0, np.left_shift(1, np.maximum(ecode - 1, 0), dtype=np.int64)))
    mm = np.minimum(m, 17)
    ww = np.minimum(w, 7)
    nregs = np.left_shift(1, mm)
    eff = np.where(expth == -1, np.minimum(((ww * nregs + 7) // 8) // 8, MSE_NELEM_MAX), np.minimum(expth, MSE_NELEM_MAX))
    maxreg = np.minimum((1 << ww) - 1, 64 - mm)
    payload = length - 3
    # sizes per type
    t0 = (st == UNDEFINED) | (st == EMPTY)
    _fail(ok, reason, t0 & (length != 3), lambda r: f"{TYPE_NAMES[int(st[r])]} hll must be exactly 3 bytes, got {int(length[r])}")
    isx = st == EXPLICIT
    _fail(ok, reason, isx & (payload % 8 != 0), lambda r: f"truncated EXPLICIT value: {int(length[r])} bytes")
    nelem = np.where(isx, payload // 8, 0)
    _fail(ok, reason, isx & (nelem > eff), lambda r: f"EXPLICIT hll with {int(nelem[r])} values exceeds its explicit threshold {int(eff[r])}")
    isf = st == FULL
    fneed = (ww * nregs + 7) // 8
    _fail(ok, reason, isf & (payload != fneed), lambda r: f"wrong FULL size: {int(length[r])} bytes, expected {3 + int(fneed[r])}")
    iss = st == SPARSE
    chunk = mm + ww
    nfilled = np.where(iss, (payload * 8) // chunk, 0)
    _fail(ok, reason, iss & (payload * 8 - nfilled * chunk >= 8), lambda r: f"wrong SPARSE size: {int(length[r])} bytes")

    # ---- explicit values
    xr = np.flatnonzero(ok & isx & (nelem > 0))
    k = nelem[xr]
    erow = np.repeat(xr, k)
    first = np.cumsum(k) - k
    within = np.arange(len(erow), dtype=np.int64) - np.repeat(first, k)
    pos = start[erow] + 3 + 8 * within
    if len(pos):
        view = np.ndarray(shape=(len(dpad) - 7,), dtype=">i8", buffer=dpad, strides=(1,))
        ev = view[pos].astype(np.int64)
        badord = np.flatnonzero((erow[1:] == erow[:-1]) & (ev[1:] <= ev[:-1]))
        if len(badord):
            badrows = np.zeros(n, bool)
            badrows[erow[badord]] = True
            _fail(ok, reason, badrows, "EXPLICIT values are not strictly ascending (duplicate or unsorted elements)")
            keepv = ok[erow]
            ev, erow = ev[keepv], erow[keepv]
    else:
        ev = np.zeros(0, np.int64)

    # ---- sparse entries
    sr = np.flatnonzero(ok & iss & (nfilled > 0))
    k = nfilled[sr]
    srow = np.repeat(sr, k)
    first = np.cumsum(k) - k
    within = np.arange(len(srow), dtype=np.int64) - np.repeat(first, k)
    ch = chunk[srow]
    bitpos = within * ch
    bytepos = start[srow] + 3 + (bitpos >> 3)
    if len(srow):
        view4 = np.ndarray(shape=(len(dpad) - 3,), dtype=">u4", buffer=dpad, strides=(1,))
        word = view4[bytepos].astype(np.int64)
        fld = (word >> (32 - ch - (bitpos & 7))) & ((1 << ch) - 1)
        wsr = ww[srow]
        sidx = fld >> wsr
        sval = (fld & ((1 << wsr) - 1)).astype(np.uint8)
    else:
        sidx = np.zeros(0, np.int64)
        sval = np.zeros(0, np.uint8)
    badrows = np.zeros(n, bool)
    badrows[srow[sval == 0]] = True
    _fail(ok, reason, badrows, "SPARSE entry with register value 0")
    badrows[:] = False
    badrows[srow[1:][(srow[1:] == srow[:-1]) & (sidx[1:] <= sidx[:-1])]] = True
    _fail(ok, reason, badrows, "SPARSE register indices not strictly ascending")
    badrows[:] = False
    over = sval > maxreg[srow]
    badrows[srow[over]] = True
    _fail(ok, reason, badrows, lambda r: f"register value {int(sval[over & (srow == r)].max())} out of range for regwidth {int(w[r])} (max {int(maxreg[r])})")
    # padding of sparse rows
    padbits = payload * 8 - nfilled * chunk
    lastb = dpad[np.maximum(start + length - 1, 0)].astype(np.int64)
    _fail(ok, reason, iss & (nfilled >= 0) & ((lastb & ((1 << np.clip(padbits, 0, 7)) - 1)) != 0) & (payload > 0), "nonzero padding bits in SPARSE hll")
    keep = ok[srow]
    srow, sidx, sval = srow[keep], sidx[keep], sval[keep]

    # ---- full rows, per params code
    full = {}
    fr_all = np.flatnonzero(ok & isf)
    for c in np.unique(code[fr_all]):
        rows = fr_all[code[fr_all] == c]
        p = params_of_code(int(c))
        regs = _unpack_full(dpad, start[rows] + 3, p)
        padbits_f = 8 * ((p.regwidth * p.nregs + 7) // 8) - p.regwidth * p.nregs
        if padbits_f:
            lb = dpad[start[rows] + length[rows] - 1] & ((1 << padbits_f) - 1)
            badrows[:] = False
            badrows[rows[lb != 0]] = True
            _fail(ok, reason, badrows, "nonzero padding bits in FULL hll")
        mx = regs.max(axis=1) if p.nregs else np.zeros(len(rows), np.uint8)
        badrows[:] = False
        badrows[rows[mx > p.max_register]] = True
        _fail(ok, reason, badrows, lambda r, p=p, rows=rows, mx=mx: f"register value {int(mx[rows == r][0])} out of range for regwidth {p.regwidth} (max {p.max_register})")
        keep = ok[rows]
        full[int(c)] = (rows[keep], regs[keep])
    return _Parsed(n, data, start, length, valid, ok, reason, code, stype, ev, erow, srow, sidx, sval, full)


def _unpack_full(dpad: np.ndarray, pstart: np.ndarray, p: Params) -> np.ndarray:
    """Registers of FULL rows (payload starts ``pstart``) as a (rows, nregs) uint8 matrix."""
    w, nregs = p.regwidth, p.nregs
    j = np.arange(nregs, dtype=np.int64)
    bit = j * w
    bidx = bit >> 3
    shift = (16 - w - (bit & 7)).astype(np.uint16)
    out = np.empty((len(pstart), nregs), dtype=np.uint8)
    step = max(1, (1 << 22) // max(nregs, 1))
    for a in range(0, len(pstart), step):
        ps = pstart[a : a + step, None] + bidx[None, :]
        two = (dpad[ps].astype(np.uint16) << 8) | dpad[ps + 1]
        out[a : a + step] = (two >> shift) & ((1 << w) - 1)
    return out


def inspect_many(blobs: object) -> InspectResult:
    """Validate many hlls at once (Arrow binary array or sequence of bytes)."""
    p = _parse(blobs)
    return InspectResult(p.ok, p.reason, p.code, p.stype)


# ---------------------------------------------------------------- grouped union


def _grouped(blobs: object, groups: object, n_groups: int | None, want_bytes: bool):
    p = _parse(blobs)
    g = np.asarray(groups, dtype=np.int64)
    if g.shape != (p.n,):
        raise HLLError(f"groups has shape {g.shape}, expected ({p.n},)")
    if p.n and g.min() < 0:
        raise HLLError(f"negative group id {int(g.min())}")
    if n_groups is None:
        n_groups = int(g.max()) + 1 if p.n else 0
    elif p.n and g.max() >= n_groups:
        raise HLLError(f"group id {int(g.max())} >= n_groups {n_groups}")
    bad = np.flatnonzero(p.valid & ~p.ok)
    if len(bad):
        r = int(bad[0])
        raise HLLError(f"invalid hll in row {r} (group {int(g[r])}): {p.reason[r]}")
    live = p.valid
    gl, cl = g[live], p.code[live].astype(np.int64)
    cmin = np.full(n_groups, 1 << 20, np.int64)
    cmax = np.full(n_groups, -1, np.int64)
    np.minimum.at(cmin, gl, cl)
    np.maximum.at(cmax, gl, cl)
    mixed = np.flatnonzero((cmax >= 0) & (cmin != cmax))
    if len(mixed):
        gi = int(mixed[0])
        a, b = params_of_code(int(cmin[gi])), params_of_code(int(cmax[gi]))
        raise HLLError(f"cannot union hlls with different parameters in group {gi}: {a} vs {b}")
    has_rows = cmax >= 0
    gcode = np.where(has_rows, cmax, -1)
    st = p.stype.astype(np.int64)
    undef = np.zeros(n_groups, bool)
    undef[g[live & (st == UNDEFINED)]] = True
    comp = np.zeros(n_groups, bool)
    hasx = np.zeros(n_groups, bool)
    hasx[g[live & (st == EXPLICIT)]] = True
    comp[g[live & ((st == SPARSE) | (st == FULL))]] = True

    card = np.full(n_groups, np.nan)
    out = [None] * n_groups if want_bytes else None
    card[has_rows & ~undef] = 0.0

    # ---- explicit: exact distinct counts per group
    eg = g[p.erow]
    xrows = np.zeros(n_groups, np.int64)
    rowsx = np.flatnonzero(live & (st == EXPLICIT) & (p.length > 3))
    np.add.at(xrows, g[rowsx], 1)
    nel = np.bincount(g[rowsx], weights=(p.length[rowsx] - 3) // 8, minlength=n_groups).astype(np.int64)
    distinct = nel.copy()
    multi = xrows >= 2
    sel = multi[eg] & ~comp[eg] & ~undef[eg]
    sv, sg = p.ev[sel], eg[sel]
    hu = sv.view(np.uint64) ^ np.uint64(1 << 63)
    key = np.empty(len(sv), np.complex128)
    key.real = ((sg.astype(np.uint64) << np.uint64(11)) | (hu >> np.uint64(53))).astype(np.float64)
    key.imag = (hu & np.uint64((1 << 53) - 1)).astype(np.float64)
    key.sort()
    uniq = np.ones(len(key), bool)
    uniq[1:] = key[1:] != key[:-1]
    ukey = key[uniq]
    ug = (ukey.real.astype(np.uint64) >> np.uint64(11)).astype(np.int64)
    distinct[multi] = 0
    distinct += np.bincount(ug, minlength=n_groups)
    # effective threshold per group
    eff = np.zeros(n_groups, np.int64)
    for c in np.unique(gcode[has_rows]):
        eff[gcode == c] = params_of_code(int(c)).effective_expthresh
    explicit_res = has_rows & ~undef & ~comp & (distinct <= eff)
    card[explicit_res] = distinct[explicit_res]
    est_groups = has_rows & ~undef & ~explicit_res

    if want_bytes:
        for gi in np.flatnonzero(has_rows & undef):
            out[gi] = params_of_code(int(gcode[gi])).header(UNDEFINED)
        empties = has_rows & ~undef & ~comp & (distinct == 0)
        for gi in np.flatnonzero(empties & (nel == 0)):
            # only EMPTY rows, or EXPLICIT rows with no elements
            out[gi] = params_of_code(int(gcode[gi])).header(EXPLICIT if hasx[gi] else EMPTY)
        _explicit_bytes(p, g, out, explicit_res & ~multi & (nel > 0), explicit_res & multi, ukey, ug, gcode)

    # ---- estimator groups, per params code
    for c in np.unique(gcode[est_groups]):
        pr = params_of_code(int(c))
        gsel = np.flatnonzero(est_groups & (gcode == c))
        _estimate_groups(p, g, gsel, pr, card, out, n_groups)
    return card, out


def _explicit_bytes(p, g, out, single, multi_res, ukey, ug, gcode) -> None:
    raw = p.data.tobytes()
    rowsx = np.flatnonzero(p.valid & (p.stype == EXPLICIT) & (p.length > 3))
    gs = g[rowsx]
    pick = single[gs]
    for r, gi in zip(rowsx[pick].tolist(), gs[pick].tolist(), strict=True):
        s = int(p.start[r])
        out[gi] = raw[s : s + int(p.length[r])]
    if not len(ukey):
        return
    m = multi_res[ug]
    uk, ugm = ukey[m], ug[m]
    hu = (uk.real.astype(np.uint64) & np.uint64(2047)) << np.uint64(53) | uk.imag.astype(np.uint64)
    vals = (hu ^ np.uint64(1 << 63)).astype(">u8").tobytes()
    bounds = np.flatnonzero(np.diff(ugm)) + 1
    starts = np.concatenate([[0], bounds]).tolist()
    ends = np.concatenate([bounds, [len(ugm)]]).tolist()
    for a, b in zip(starts, ends, strict=True):
        gi = int(ugm[a])
        out[gi] = params_of_code(int(gcode[gi])).header(EXPLICIT) + vals[8 * a : 8 * b]


def _estimate_groups(p, g, gsel, pr: Params, card, out, n_groups) -> None:
    nregs = pr.nregs
    local = np.full(n_groups, -1, np.int64)
    chunk = max(1, (1 << 25) // nregs)
    for a in range(0, len(gsel), chunk):
        gs = gsel[a : a + chunk]
        local[:] = -1
        local[gs] = np.arange(len(gs))
        dense = np.zeros(len(gs) * nregs, np.uint8)
        le = local[g[p.erow]]
        m = le >= 0
        if m.any():
            idx, rho = rho_and_index(p.ev[m], pr.log2m, pr.regwidth)
            np.maximum.at(dense, le[m] * nregs + idx, rho)
        ls = local[g[p.srow]]
        m = ls >= 0
        if m.any():
            np.maximum.at(dense, ls[m] * nregs + p.sidx[m], p.sval[m])
        d2 = dense.reshape(len(gs), nregs)
        if pr.code in p.full:
            rows, regs = p.full[pr.code]
            lf = local[g[rows]]
            m = lf >= 0
            if m.any():
                np.maximum.at(d2, lf[m], regs[m])
        if pr.log2m + 1 + pr.max_register <= 53:
            # every partial sum is a multiple of 2**-max_register below 2**(log2m+1):
            # exact in any order, so the faster pairwise sum equals the C loop
            sums = POW2_NEG[d2].sum(axis=1)
        else:
            sums = np.cumsum(POW2_NEG[d2], axis=1)[:, -1]  # sequential like the C loop
        zeros = nregs - np.count_nonzero(d2, axis=1)
        card[gs] = estimate_from_sums(pr, sums, zeros)
        if out is not None:
            nfilled = nregs - zeros
            for i, gi in enumerate(gs.tolist()):
                out[gi] = encode_compressed(pr, d2[i], choose_compressed_type(pr, int(nfilled[i])))


def grouped_cardinality(blobs: object, groups: object, n_groups: int | None = None) -> np.ndarray:
    """Per group ``hll_cardinality(hll_union_agg(hll))``; NaN for groups without rows or UNDEFINED.

    Raises HLLError for invalid rows (null rows are skipped) and for mixed
    parameters inside a group (naming the group id).
    """
    card, _ = _grouped(blobs, groups, n_groups, want_bytes=False)
    return card


def grouped_union(
    blobs: object, groups: object, n_groups: int | None = None
) -> tuple[np.ndarray, list[bytes | None]]:
    """Like :func:`grouped_cardinality`, plus the union bytes per group (None where no rows)."""
    return _grouped(blobs, groups, n_groups, want_bytes=True)
