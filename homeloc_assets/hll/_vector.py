"""Vectorised batch functions over many hlls (the pipeline's hot path).

Owns: validation of a whole column (:func:`inspect_many`), and ``hll_union_agg ... GROUP BY`` with
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
from ._hex import arrow_buffers
from ._ops import POW2_NEG, estimate_from_sums, gamma_m2, rho_and_index

__all__ = [
    "InspectResult",
    "inspect_many",
    "params_of_code",
    "grouped_cardinality",
    "grouped_union",
]

def params_of_code(code: int) -> Params:
    """Inverse of the params code of :func:`inspect_many` (raises HLLError for -1/garbage)."""
    code = int(code)
    if not 0 <= code <= 0xFFFF:
        raise HLLError(f"invalid params code {code}")
    return params_from_header(code >> 8, code & 0xFF, registers=False)


def _flat(arr: object, binary: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(data uint8, offsets int64 [n+1], valid bool) of a (chunked) Arrow binary/string array."""
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

    ok: np.ndarray  # bool
    reason: np.ndarray  # object: None where ok
    params: np.ndarray  # int32 params code, -1 where the header is invalid
    storage_type: np.ndarray  # int8, -1 where unknown


@dataclass
class _Parsed:
    n: int
    data: np.ndarray
    dpad: np.ndarray  # data + 8 zero bytes (safe over-reads)
    start: np.ndarray
    length: np.ndarray
    valid: np.ndarray  # not null
    ok: np.ndarray
    reason: np.ndarray
    code: np.ndarray
    stype: np.ndarray
    # explicit values of EXPLICIT rows with elements (as checked): rows ``xr``
    # (ascending), their values ``ev[xoff[i]:xoff[i+1]]`` (int64, ascending)
    xr: np.ndarray
    xoff: np.ndarray
    ev: np.ndarray
    # sparse entries of SPARSE rows with entries (as checked): rows ``sr``
    # (ordered by params code, then row), entries ``sidx/sval[soff[i]:soff[i+1]]``;
    # ``sseg[code] = (a, b)``: the rows ``sr[a:b]`` have that code
    sr: np.ndarray
    soff: np.ndarray
    sidx: np.ndarray
    sval: np.ndarray
    sseg: dict
    # FULL rows (ok) per params code; registers are unpacked on demand
    full: dict
    arr: pa.Array  # zero-copy large_binary view of (data, offsets), for payload copies

    def payloads(self, rows: np.ndarray) -> np.ndarray:
        """Concatenated payloads (bytes after the 3-byte header) of ``rows``, as uint8."""
        return _payloads(self.arr, rows)

    def erow(self) -> np.ndarray:
        """Row of every explicit value."""
        return np.repeat(self.xr, np.diff(self.xoff))


def _payloads(arr: pa.Array, rows: np.ndarray) -> np.ndarray:
    if not len(rows):
        return np.zeros(0, np.uint8)
    # Arrow copies whole values (memcpy), far cheaper than a per-byte numpy gather
    sl = pc.binary_slice(arr.take(pa.array(rows, pa.int64())), 3, 1 << 20)  # hlls are < 2**20 bytes
    bufs = sl.buffers()
    off = np.frombuffer(bufs[1], np.int64)[sl.offset : sl.offset + len(sl) + 1]
    return np.frombuffer(bufs[2], np.uint8)[off[0] : off[-1]]


def _fail(p_ok: np.ndarray, reason: np.ndarray, mask: np.ndarray, msg) -> None:
    """Mark rows failing (first reason wins); msg is a str or a callable(row) -> str."""
    rows = np.flatnonzero(mask & p_ok)
    for r in rows:
        reason[r] = msg(r) if callable(msg) else msg
    p_ok[rows] = False


def _ranges(first: np.ndarray, count: np.ndarray, step: int = 1) -> np.ndarray:
    """Concatenation of ``first[i] + step * arange(count[i])`` over i (int64)."""
    count = np.asarray(count, dtype=np.int64)
    total = int(count.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    newfirst = np.cumsum(count) - count
    out = np.repeat(np.asarray(first, dtype=np.int64) - step * newfirst, count)
    out += np.arange(0, step * total, step, dtype=np.int64)
    return out


def _rows_of(off: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Index i with off[i] <= pos < off[i+1] for entry positions ``pos``."""
    return np.searchsorted(off, pos, side="right") - 1


def _decode_sparse(arr, rows, dpad: np.ndarray, pstart: np.ndarray, k: np.ndarray, log2m: int, w: int):
    """(register index int32, value uint8) of all entries of SPARSE payloads at ``pstart``."""
    chunk = log2m + w
    if chunk <= 16 and chunk % 8 == 0:  # e.g. the default 11/5: entries are big-endian uint16
        fld = np.frombuffer(_payloads(arr, rows), ">u2" if chunk == 16 else np.uint8).astype(np.uint16)
        val = (fld & np.uint16((1 << w) - 1)).astype(np.uint8)
        fld >>= np.uint16(w)
        return fld, val
    else:
        bitpos = _ranges(pstart * 8, k, chunk)
        view4 = np.ndarray(shape=(len(dpad) - 3,), dtype=">u4", buffer=dpad, strides=(1,))
        word = view4[bitpos >> 3].astype(np.int64)
        fld = ((word >> (32 - chunk - (bitpos & 7))) & ((1 << chunk) - 1)).astype(np.int32)
    return fld >> w, (fld & ((1 << w) - 1)).astype(np.uint8)


def _parse(blobs: object) -> _Parsed:
    data, off, valid = _flat(blobs, binary=True)
    n = len(off) - 1
    start = off[:-1]
    length = off[1:] - start
    dpad = np.concatenate([data, np.zeros(8, np.uint8)])
    arr = pa.LargeBinaryArray.from_buffers(pa.large_binary(), n, [None, pa.py_buffer(off), pa.py_buffer(data)])
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
    # as postgresql-hll 2.16: parameters matter only for values with registers; the
    # reserved bit of byte 2 is ignored (see _format.params_from_header)
    regs = (st == FULL) | (st == SPARSE)
    _fail(ok, reason, regs & (w > 7), lambda r: f"regwidth {int(w[r])} out of range: must be between 1 and 7")
    _fail(ok, reason, regs & (m > 17), lambda r: f"log2m {int(m[r])} out of range: must be between 0 and 17")
    hdr_ok = ok.copy()
    code = np.where(hdr_ok, (b1 << 8) | (b2 & 0x7F), -1).astype(np.int32)
    stype = np.where(hdr_ok, st, -1).astype(np.int8)
    mm = np.minimum(m, 17)
    ww = np.minimum(w, 7)
    nregs = np.left_shift(1, mm)
    payload = length - 3
    # sizes per type
    t0 = (st == UNDEFINED) | (st == EMPTY)
    _fail(ok, reason, t0 & (length != 3), lambda r: f"{TYPE_NAMES[int(st[r])]} hll must be exactly 3 bytes, got {int(length[r])}")
    isx = st == EXPLICIT
    _fail(ok, reason, isx & (payload % 8 != 0), lambda r: f"truncated EXPLICIT value: {int(length[r])} bytes")
    nelem = np.where(isx, payload // 8, 0)
    _fail(ok, reason, isx & (nelem > MSE_NELEM_MAX), lambda r: f"EXPLICIT hll with {int(nelem[r])} values is too large (at most {MSE_NELEM_MAX})")
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
    xoff = np.zeros(len(xr) + 1, np.int64)
    np.cumsum(k, out=xoff[1:])
    if len(xr):
        ev = np.frombuffer(_payloads(arr, xr), ">i8").astype(np.int64)
        nonasc = ev[1:] <= ev[:-1]
        nonasc[xoff[1:-1] - 1] = False  # pairs across row boundaries
        badord = np.flatnonzero(nonasc)
        if len(badord):
            badrows = np.zeros(n, bool)
            badrows[xr[_rows_of(xoff, badord)]] = True
            _fail(ok, reason, badrows, "EXPLICIT values are not strictly ascending (duplicate or unsorted elements)")
    else:
        ev = np.zeros(0, np.int64)

    # ---- sparse entries, per params code
    sr = np.flatnonzero(ok & iss & (nfilled > 0))
    sseg = {}
    if len(sr):
        sc = code[sr]
        if sc.min() != sc.max():
            sr = sr[np.argsort(sc, kind="stable")]
            sc = code[sr]
        k = nfilled[sr]
        soff = np.zeros(len(sr) + 1, np.int64)
        np.cumsum(k, out=soff[1:])
        cuts = np.flatnonzero(sc[1:] != sc[:-1]) + 1
        bounds = [0, *cuts.tolist(), len(sr)]
        parts_i, parts_v = [], []
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            c = int(sc[a])
            sseg[c] = (a, b)
            pc_ = params_of_code(c)
            i_, v_ = _decode_sparse(arr, sr[a:b], dpad, start[sr[a:b]] + 3, k[a:b], pc_.log2m, pc_.regwidth)
            parts_i.append(i_)
            parts_v.append(v_)
        sidx = parts_i[0] if len(parts_i) == 1 else np.concatenate(parts_i)
        sval = parts_v[0] if len(parts_v) == 1 else np.concatenate(parts_v)
        badrows = np.zeros(n, bool)
        zero = np.flatnonzero(sval == 0)
        if len(zero):
            badrows[sr[_rows_of(soff, zero)]] = True
            _fail(ok, reason, badrows, "SPARSE entry with register value 0")
            badrows[:] = False
        nonasc = sidx[1:] <= sidx[:-1]
        nonasc[soff[1:-1] - 1] = False
        bad = np.flatnonzero(nonasc)
        if len(bad):
            badrows[sr[_rows_of(soff, bad + 1)]] = True
            _fail(ok, reason, badrows, "SPARSE register indices not strictly ascending")
            badrows[:] = False
        for c, (a, b) in sseg.items():
            pc_ = params_of_code(c)
            if pc_.max_register >= (1 << pc_.regwidth) - 1:
                continue  # no stored value can exceed it
            e0, e1 = int(soff[a]), int(soff[b])
            over = np.flatnonzero(sval[e0:e1] > pc_.max_register) + e0
            if len(over):
                badrows[sr[_rows_of(soff, over)]] = True

                def msg(r, pc_=pc_):
                    i = int(np.flatnonzero(sr == r)[0])
                    return (
                        f"register value {int(sval[soff[i] : soff[i + 1]].max())} out of range for "
                        f"regwidth {pc_.regwidth} (max {pc_.max_register})"
                    )

                _fail(ok, reason, badrows, msg)
                badrows[:] = False
    else:
        soff = np.zeros(1, np.int64)
        sidx = np.zeros(0, np.int32)
        sval = np.zeros(0, np.uint8)
    # padding of sparse rows
    sp = np.flatnonzero(ok & iss & (payload > 0))
    padbits = payload[sp] * 8 - nfilled[sp] * chunk[sp]
    lastb = dpad[start[sp] + length[sp] - 1].astype(np.int64)
    badrows = np.zeros(n, bool)
    badrows[sp[(lastb & ((1 << np.clip(padbits, 0, 7)) - 1)) != 0]] = True
    _fail(ok, reason, badrows, "nonzero padding bits in SPARSE hll")

    # ---- full rows, per params code
    full = {}
    fr_all = np.flatnonzero(ok & isf)
    for c in np.unique(code[fr_all]):
        rows = fr_all[code[fr_all] == c]
        p = params_of_code(int(c))
        padbits_f = 8 * ((p.regwidth * p.nregs + 7) // 8) - p.regwidth * p.nregs
        if padbits_f:
            lb = dpad[start[rows] + length[rows] - 1] & ((1 << padbits_f) - 1)
            badrows = np.zeros(n, bool)
            badrows[rows[lb != 0]] = True
            _fail(ok, reason, badrows, "nonzero padding bits in FULL hll")
        if p.max_register < (1 << p.regwidth) - 1 and p.nregs:
            live = rows[ok[rows]]
            mx = np.zeros(len(live), np.uint8)
            step = max(1, (1 << 22) // p.nregs)
            for a in range(0, len(live), step):
                mx[a : a + step] = _unpack_full(dpad, start[live[a : a + step]] + 3, p).max(axis=1)
            badrows = np.zeros(n, bool)
            badrows[live[mx > p.max_register]] = True
            _fail(ok, reason, badrows, lambda r, p=p, live=live, mx=mx: f"register value {int(mx[live == r][0])} out of range for regwidth {p.regwidth} (max {p.max_register})")
        full[int(c)] = rows[ok[rows]]
    return _Parsed(n, data, dpad, start, length, valid, ok, reason, code, stype, xr, xoff, ev, sr, soff, sidx, sval, sseg, full, arr)


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

_SIGN = np.uint64(1 << 63)
_SCRATCH_REGS = 1 << 22  # registers per chunk of estimator groups (a 16 MiB uint32 scratch)
_NARROW_MAX = 1 << 26  # contributions per chunk numbered in a uint32 scratch; more use uint64


def _group_order(gv: np.ndarray, n_ids: int) -> np.ndarray:
    """Stable argsort of ids in [0, n_ids) by 16-bit radix passes (numpy radix-sorts uint16)."""
    perm = None
    shift = 0
    while shift == 0 or (n_ids - 1) >> shift:
        cur = gv if perm is None else gv[perm]
        digit = ((cur >> shift) & 0xFFFF).astype(np.uint16)
        o = np.argsort(digit, kind="stable")
        perm = o if perm is None else perm[o]
        shift += 16
    return perm


def _groups_with(g: np.ndarray, mask: np.ndarray, n_groups: int) -> np.ndarray:
    out = np.zeros(n_groups, bool)
    out[g[mask]] = True
    return out


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
    if len(cl) and cl.min() != cl.max():
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
    else:
        has_rows = _groups_with(g, live, n_groups)
        gcode = np.where(has_rows, int(cl[0]) if len(cl) else -1, -1)
    st = p.stype
    undef = _groups_with(g, live & (st == UNDEFINED), n_groups)
    hasx = _groups_with(g, live & (st == EXPLICIT), n_groups)
    comp = _groups_with(g, live & ((st == SPARSE) | (st == FULL)), n_groups)

    card = np.full(n_groups, np.nan)
    out = [None] * n_groups if want_bytes else None
    card[has_rows & ~undef] = 0.0

    # ---- explicit: exact distinct counts per group
    gx = g[p.xr]
    kx = np.diff(p.xoff)
    xrows = np.bincount(gx, minlength=n_groups)
    nel = np.bincount(gx, weights=kx, minlength=n_groups).astype(np.int64)
    distinct = nel.copy()
    multi = (xrows >= 2) & ~comp & ~undef
    ug, uv = _explicit_union(p, gx, kx, np.flatnonzero(multi[gx]), n_groups, distinct, want_bytes)
    # effective threshold per group
    codes = np.unique(gcode[has_rows]).tolist()
    if len(codes) == 1:
        eff = np.full(n_groups, params_of_code(codes[0]).effective_expthresh, np.int64)
    else:
        eff = np.zeros(n_groups, np.int64)
        for c in codes:
            eff[gcode == c] = params_of_code(c).effective_expthresh
    # hll.c's explicit_union keeps the first EXPLICIT value of a group as it is and
    # promotes only when a new element would pass the threshold: the union stays
    # EXPLICIT while its distinct count is at most max(threshold, first value's size)
    first_n = np.zeros(n_groups, np.int64)
    if len(gx):
        ug_first, first_at = np.unique(gx, return_index=True)
        first_n[ug_first] = kx[first_at]
    explicit_res = has_rows & ~undef & ~comp & (distinct <= np.maximum(eff, first_n))
    card[explicit_res] = distinct[explicit_res]
    est_groups = has_rows & ~undef & ~explicit_res

    if want_bytes:
        hdr = {c: params_of_code(c) for c in codes}
        for gi in np.flatnonzero(has_rows & undef).tolist():
            out[gi] = hdr[int(gcode[gi])].header(UNDEFINED)
        empties = has_rows & ~undef & ~comp & (distinct == 0)
        for gi in np.flatnonzero(empties & (nel == 0)).tolist():
            # only EMPTY rows, or EXPLICIT rows with no elements
            out[gi] = hdr[int(gcode[gi])].header(EXPLICIT if hasx[gi] else EMPTY)
        _explicit_bytes(p, gx, out, explicit_res & ~multi & (nel > 0), explicit_res & multi, ug, uv, gcode, hdr)

    # ---- estimator groups, per params code
    for c in np.unique(gcode[est_groups]).tolist():
        pr = params_of_code(c)
        gsel = np.flatnonzero(est_groups & (gcode == c))
        gamma_m2(pr.nregs)  # raises for too few registers, like hll_cardinality
        if pr.log2m + 1 + pr.max_register <= 53:
            _estimate_exact(p, g, gsel, pr, card, out)
        else:
            _estimate_dense(p, g, gsel, pr, card, out)
    return card, out


def _explicit_union(p: _Parsed, gx, kx, sel, n_groups, distinct, want_bytes):
    """Subtract duplicates from ``distinct`` for the EXPLICIT rows ``p.xr[sel]``.

    Values are sorted by (group, value) with one stable int64 argsort of
    ``group << (64 - b) | value >> b`` over rows put in group order first (so
    the keys are ascending runs); equal keys are then told apart by the full
    value, and a fallback lexsort covers the (adversarial) case where equal
    keys hold unsorted values.  Returns the distinct (group, value) pairs in
    order when ``want_bytes``.
    """
    if not len(sel):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows = sel[_group_order(gx[sel], n_groups)]
    kk = kx[rows]
    sv = p.ev[_ranges(p.xoff[rows], kk)].view(np.uint64) ^ _SIGN
    gb = max(1, int(n_groups - 1).bit_length())
    sgs = sk = None
    if gb <= 48:
        shift = np.uint64(64 - gb)
        key = np.repeat(gx[rows].astype(np.uint64) << shift, kk)
        key |= sv >> np.uint64(gb)
        o = np.argsort(key, kind="stable")
        sk = key[o]
        if not want_bytes:
            # only the (few) pairs of equal keys need their full values
            eq = np.flatnonzero(sk[1:] == sk[:-1])
            v0, v1 = sv[o[eq]], sv[o[eq + 1]]
            if (v1 < v0).any():
                sk = None
            else:
                dg = (sk[1:][eq[v1 == v0]] >> shift).astype(np.int64)
                distinct -= np.bincount(dg, minlength=n_groups)
                return np.zeros(0, np.int64), np.zeros(0, np.int64)
        else:
            ss = sv[o]
            eqk = sk[1:] == sk[:-1]
            if (eqk & (ss[1:] < ss[:-1])).any():
                sk = None
            else:
                dup = eqk & (ss[1:] == ss[:-1])
    if sk is None:
        sg = np.repeat(gx[rows], kk)
        o = np.lexsort((sv, sg))
        ss, sgs = sv[o], sg[o]
        dup = (sgs[1:] == sgs[:-1]) & (ss[1:] == ss[:-1])
    dg = sgs[1:][dup] if sgs is not None else (sk[1:][dup] >> shift).astype(np.int64)
    distinct -= np.bincount(dg, minlength=n_groups)
    if not want_bytes:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    keep = np.ones(len(ss), bool)
    keep[1:] = ~dup
    ug = sgs[keep] if sgs is not None else (sk[keep] >> shift).astype(np.int64)
    return ug, (ss[keep] ^ _SIGN).view(np.int64)


def _explicit_bytes(p, gx, out, single, multi_res, ug, uv, gcode, hdr) -> None:
    raw = p.data.tobytes()
    pick = single[gx]
    for r, gi in zip(p.xr[pick].tolist(), gx[pick].tolist(), strict=True):
        s = int(p.start[r])
        out[gi] = raw[s : s + int(p.length[r])]
    if not len(ug):
        return
    m = multi_res[ug]
    ugm = ug[m]
    if not len(ugm):  # every multi-row group went past the threshold
        return
    vals = uv[m].astype(">i8").tobytes()
    bounds = np.flatnonzero(np.diff(ugm)) + 1
    starts = np.concatenate([[0], bounds]).tolist()
    ends = np.concatenate([bounds, [len(ugm)]]).tolist()
    for a, b in zip(starts, ends, strict=True):
        gi = int(ugm[a])
        out[gi] = hdr[int(gcode[gi])].header(EXPLICIT) + vals[8 * a : 8 * b]


def _packed_regs(dpad: np.ndarray, pstart: np.ndarray, reg: np.ndarray, w: int) -> np.ndarray:
    """Register ``reg`` of FULL payloads starting at ``pstart`` (element-wise)."""
    bit = reg.astype(np.int64) * w
    b = pstart + (bit >> 3)
    two = (dpad[b].astype(np.uint16) << 8) | dpad[b + 1]
    return ((two >> (16 - w - (bit & 7)).astype(np.uint16)) & ((1 << w) - 1)).astype(np.uint8)


def _full_sums(pay: np.ndarray, pr: Params, ti: np.ndarray):
    """Per FULL payload (rows of ``pay``): (sum of ti[register] as int64, number of zero registers).

    Eight registers are ``regwidth`` whole bytes; each such group is read as one
    integer and split into four pairs of registers, each looked up in one table
    (sum and zero count packed in one int64 when they fit), without unpacking
    the registers.
    """
    w, m, log2m = pr.regwidth, pr.nregs, pr.log2m
    pw = 2 * w
    tix = np.zeros(1 << w, np.int64)
    tix[: len(ti)] = ti
    pv = np.arange(1 << pw)
    hi, lo = pv >> w, pv & ((1 << w) - 1)
    ts = tix[hi] + tix[lo]
    tz = (hi == 0).astype(np.int64) + (lo == 0)
    zsh = log2m + pr.max_register + 1
    both = zsh + log2m + 1 <= 63
    table = ts + (tz << zsh) if both else ts
    nf = len(pay)
    sums = np.empty(nf, np.int64)
    zeros = np.empty(nf, np.int64)
    pay3 = pay.reshape(nf, m // 8, w)
    pmask = np.uint64((1 << pw) - 1)
    step = max(1, (1 << 18) // (m // 8))
    for a in range(0, nf, step):
        blk = pay3[a : a + step]
        c = blk[:, :, 0].astype(np.uint64)
        for i in range(1, w):
            c <<= np.uint64(8)
            c |= blk[:, :, i]
        tot = np.zeros(len(blk), np.int64)
        zt = np.zeros(len(blk), np.int64)
        for j in range(4):
            pc_ = ((c >> np.uint64(pw * (3 - j))) & pmask).astype(np.intp)
            tot += table[pc_].sum(axis=1)
            if not both:
                zt += tz[pc_].sum(axis=1)
        if both:
            sums[a : a + step] = tot & ((1 << zsh) - 1)
            zeros[a : a + step] = tot >> zsh
        else:
            sums[a : a + step] = tot
            zeros[a : a + step] = zt
    return sums, zeros


def _sorted_by(loc: np.ndarray, ids: np.ndarray, n_ids: int, nchunks: int) -> np.ndarray:
    return ids if nchunks == 1 or not len(ids) else ids[_group_order(loc[ids], n_ids)]


def _estimate_exact(p: _Parsed, g, gsel, pr: Params, card, out) -> None:
    """Estimator for groups ``gsel`` when every register sum is exact in any order.

    With ``log2m + 1 + max_register <= 53`` every partial sum of 2**-r over
    registers is a multiple of 2**-max_register below 2**(log2m+1), so the
    sequential double sum of hll.c is the exact rational sum.  We compute it as
    integers scaled by 2**max_register: one *base* compressed row per group (a
    FULL row if any, else a SPARSE row; its sum read straight from its bytes),
    plus the changes made by all other contributions (explicit hashes, other
    SPARSE entries, other FULL registers): per touched (group, register) the
    maximum (one ``maximum.at`` into a reusable scratch of value << 26 |
    contribution number, so each touched register has one winner) and its old
    base value (base SPARSE entries read the scratch), chunk by chunk.
    No groups x registers matrix is built (only when union bytes are wanted).
    """
    m, log2m, w, mr = pr.nregs, pr.log2m, pr.regwidth, pr.max_register
    n_groups, ne = len(card), len(gsel)
    loc = np.full(n_groups, -1, np.int64)
    loc[gsel] = np.arange(ne)
    ti = np.left_shift(np.int64(1), mr - np.arange(mr + 1, dtype=np.int64))  # 2**-r * 2**mr
    unit = int(ti[0])

    lx = loc[g[p.xr]]
    xi = np.flatnonzero(lx >= 0)
    kx = np.diff(p.xoff)
    a, b = p.sseg.get(pr.code, (0, 0))
    ls = loc[g[p.sr[a:b]]]
    si = np.flatnonzero(ls >= 0)
    ks = np.diff(p.soff[a : b + 1])
    frows = p.full.get(pr.code, np.zeros(0, np.int64))
    lf = loc[g[frows]]
    fi = np.flatnonzero(lf >= 0)
    fstart = p.start[frows] + 3

    # base rows: one FULL row per group if any, else one SPARSE row
    bf = np.full(ne, -1, np.int64)
    bf[lf[fi]] = fi
    isbf = bf[lf[fi]] == fi
    fbase, fextra = fi[isbf], fi[~isbf]
    bs = np.full(ne, -1, np.int64)
    cand = si[bf[ls[si]] < 0]
    bs[ls[cand]] = cand
    sbase = cand[bs[ls[cand]] == cand]
    isbs = np.zeros(b - a, bool)
    isbs[sbase] = True
    sextra = si[~isbs[si]]

    # renumber the groups: first those with a base SPARSE row (in the order of
    # that row; those with contributions first), so that the base rows of a
    # chunk of groups are one span of the stored SPARSE entries
    contrib = np.zeros(ne, bool)
    contrib[lx[xi]] = True
    contrib[ls[sextra]] = True
    contrib[lf[fextra]] = True
    if out is None:  # only the base rows of groups with contributions are read
        sbc = contrib[ls[sbase]]
        sbase = np.concatenate([sbase[sbc], sbase[~sbc]])
        nsb = int(np.count_nonzero(sbc))
    else:  # all are (for the union bytes)
        nsb = len(sbase)
    rest = np.ones(ne, bool)
    rest[ls[sbase]] = False
    order = np.concatenate([ls[sbase], np.flatnonzero(rest)])
    newid = np.empty(ne + 1, np.int64)
    newid[order] = np.arange(ne)
    newid[ne] = -1
    lx, ls, lf = newid[lx], newid[ls], newid[lf]
    gsel, bf, contrib = gsel[order], bf[order], contrib[order]

    s_tot = np.full(ne, float(m * unit))
    z_tot = np.full(ne, m, np.int64)
    if len(sbase):
        e0, e1 = int(p.soff[a]), int(p.soff[b])
        ssum = np.empty(b - a, np.int64)
        step = max(1, (b - a) * (1 << 20) // max(1, e1 - e0))  # ~1M entries per block: small temporaries
        for r0 in range(a, b, step):
            r1 = min(b, r0 + step)
            f0 = int(p.soff[r0])
            ssum[r0 - a : r1 - a] = np.add.reduceat(ti[p.sval[f0 : int(p.soff[r1])]], p.soff[r0:r1] - f0)
        kb = ks[sbase]
        s_tot[ls[sbase]] = ssum[sbase] + (m - kb) * unit
        z_tot[ls[sbase]] = m - kb
    if len(fbase):
        fs, fz = _full_sums(p.payloads(frows[fbase]).reshape(len(fbase), -1), pr, ti)
        s_tot[lf[fbase]] = fs
        z_tot[lf[fbase]] = fz

    cgroups = max(1, _SCRATCH_REGS >> log2m)
    nchunks = -(-ne // cgroups)
    xi = _sorted_by(lx, xi, ne, nchunks)
    sextra = _sorted_by(ls, sextra, ne, nchunks)
    fextra = _sorted_by(lf, fextra, ne, nchunks)
    fbo = _sorted_by(lf, fbase, ne, nchunks) if out is not None else fbase[:0]
    bounds = np.arange(0, ne + cgroups, cgroups)
    cut = {
        name: np.searchsorted(lo[ids], bounds) if nchunks > 1 else np.array([0, len(ids)])
        for name, ids, lo in (("x", xi, lx), ("s", sextra, ls), ("f", fextra, lf), ("fb", fbo, lf))
    }
    # base SPARSE rows read (local ids 0..nsb-1, ascending rows): per chunk one
    # span of entries; rows in between that are not read point to a dummy
    # block of m registers past the chunk (never touched, so always 0)
    dummy = min(ne, cgroups) * m
    isread = np.zeros(b - a, bool)
    isread[sbase[:nsb]] = True
    scr = np.zeros(dummy + m, np.uint32)
    wide = None
    for ci, c0 in enumerate(range(0, ne, cgroups)):
        c1 = min(ne, c0 + cgroups)
        flats, vals = [], []
        rx = xi[cut["x"][ci] : cut["x"][ci + 1]]
        if len(rx):
            kk = kx[rx]
            reg, rho = rho_and_index(p.ev[_ranges(p.xoff[rx], kk)], log2m, w)
            keep = rho > 0
            flats.append((np.repeat((lx[rx] - c0) << log2m, kk) + reg)[keep])
            vals.append(rho[keep])
        rs = sextra[cut["s"][ci] : cut["s"][ci + 1]]
        if len(rs):
            kk = ks[rs]
            ent = _ranges(p.soff[a + rs], kk)
            flats.append(np.repeat((ls[rs] - c0) << log2m, kk) + p.sidx[ent])
            vals.append(p.sval[ent])
        rf = fextra[cut["f"][ci] : cut["f"][ci + 1]]
        if len(rf):
            regs = _unpack_full(p.dpad, fstart[rf], pr)
            nzr, nzc = np.nonzero(regs)
            flats.append(((lf[rf][nzr] - c0) << log2m) + nzc)
            vals.append(regs[nzr, nzc])
        flat = np.concatenate(flats) if len(flats) > 1 else (flats[0] if flats else np.zeros(0, np.int64))
        val = np.concatenate(vals) if len(vals) > 1 else (vals[0] if vals else np.zeros(0, np.uint8))
        nt = len(flat)
        if c0 < nsb:
            r0, r1 = int(sbase[c0]), int(sbase[min(c1, nsb) - 1]) + 1
            ro = np.where(isread[r0:r1], (ls[r0:r1] - c0) << log2m, dummy)
            e0, e1 = int(p.soff[a + r0]), int(p.soff[a + r1])
            bflat = np.repeat(ro, ks[r0:r1]) + p.sidx[e0:e1]
            bval = p.sval[e0:e1]
        else:
            bflat, bval = np.zeros(0, np.int64), np.zeros(0, np.uint8)
        if nt:
            if nt < _NARROW_MAX:
                sc, vsh = scr, 26
            else:
                if wide is None:
                    wide = np.zeros(len(scr), np.uint64)
                sc, vsh = wide, 40
            dt = sc.dtype.type
            key = (val.astype(sc.dtype) << dt(vsh)) | np.arange(nt, dtype=sc.dtype)
            np.maximum.at(sc, flat, key)
            rep = sc[flat] == key  # exactly one winner per touched register
            # old (base) values: base SPARSE entries at touched registers tell their winner
            old = np.zeros(nt, np.uint8)
            if len(bflat):
                hit = sc[bflat]
                tb = np.flatnonzero(hit)
                old[(hit[tb] & dt((1 << vsh) - 1)).astype(np.int64)] = bval[tb]
            sc[flat] = 0
            fl, new, old = flat[rep], val[rep], old[rep]
            gl = fl >> log2m
            fb = bf[c0 + gl]
            hasf = np.flatnonzero(fb >= 0)
            if len(hasf):
                old[hasf] = _packed_regs(p.dpad, fstart[fb[hasf]], fl[hasf] & (m - 1), w)
            new = np.maximum(new, old)
            s_tot[c0:c1] -= np.bincount(gl, weights=ti[old] - ti[new], minlength=c1 - c0)
            z_tot[c0:c1] -= np.bincount(gl[(old == 0) & (new > 0)], minlength=c1 - c0)
        if out is not None:
            dense = np.zeros(dummy + m, np.uint8)
            dense[bflat] = bval
            dense = dense[: (c1 - c0) * m]
            rfb = fbo[cut["fb"][ci] : cut["fb"][ci + 1]]
            if len(rfb):
                d2 = dense.reshape(c1 - c0, m)
                d2[lf[rfb] - c0] = _unpack_full(p.dpad, fstart[rfb], pr)
            if nt:
                dense[fl] = new
            _pack_groups(pr, dense.reshape(c1 - c0, m), gsel[c0:c1], m - z_tot[c0:c1], out)
    sums = s_tot * np.ldexp(1.0, -mr)
    card[gsel] = estimate_from_sums(pr, sums, z_tot)


def _pack_groups(pr: Params, d2: np.ndarray, gids: np.ndarray, nfilled: np.ndarray, out) -> None:
    """Union bytes (SPARSE or FULL, as hll.c ``multiset_pack``) of register rows ``d2``."""
    w, log2m, m = pr.regwidth, pr.log2m, pr.nregs
    sparse = nfilled * (log2m + w) < m * w if pr.sparseon else np.zeros(len(gids), bool)
    hs, hf = pr.header(SPARSE), pr.header(FULL)
    fi = np.flatnonzero(~sparse)
    if len(fi):
        bits = np.unpackbits(d2[fi][:, :, None], axis=2)[:, :, 8 - w :].reshape(len(fi), m * w)
        packed = np.packbits(bits, axis=1)
        for i, gi in enumerate(gids[fi].tolist()):
            out[gi] = hf + packed[i].tobytes()
    si = np.flatnonzero(sparse)
    if not len(si):
        return
    if log2m + w == 16:
        r, c = np.nonzero(d2[si])
        fld = ((c.astype(np.uint32) << np.uint32(w)) | d2[si][r, c]).astype(">u2").tobytes()
        cnt = np.bincount(r, minlength=len(si))
        ends = np.cumsum(cnt).tolist()
        a0 = 0
        for gi, e in zip(gids[si].tolist(), ends, strict=True):
            out[gi] = hs + fld[2 * a0 : 2 * e]
            a0 = e
    else:
        for i, gi in zip(si.tolist(), gids[si].tolist(), strict=True):
            out[gi] = encode_compressed(pr, d2[i], SPARSE)


def _estimate_dense(p: _Parsed, g, gsel, pr: Params, card, out) -> None:
    """Estimator via a (groups x registers) matrix and the sequential register sum.

    Used when the register sum is not provably exact in any order
    (``log2m + 1 + max_register > 53``, i.e. regwidth >= 6 with large log2m).
    """
    n_groups = len(card)
    nregs = pr.nregs
    local = np.full(n_groups, -1, np.int64)
    erow = p.erow()
    a, b = p.sseg.get(pr.code, (0, 0))
    e0, e1 = int(p.soff[a]), int(p.soff[b])
    srow = np.repeat(p.sr[a:b], np.diff(p.soff[a : b + 1]))
    sidx, sval = p.sidx[e0:e1], p.sval[e0:e1]
    frows = p.full.get(pr.code, np.zeros(0, np.int64))
    chunk = max(1, (1 << 25) // nregs)
    for c0 in range(0, len(gsel), chunk):
        gs = gsel[c0 : c0 + chunk]
        local[:] = -1
        local[gs] = np.arange(len(gs))
        dense = np.zeros(len(gs) * nregs, np.uint8)
        le = local[g[erow]]
        m = le >= 0
        if m.any():
            idx, rho = rho_and_index(p.ev[m], pr.log2m, pr.regwidth)
            np.maximum.at(dense, le[m] * nregs + idx, rho)
        ls = local[g[srow]]
        m = ls >= 0
        if m.any():
            np.maximum.at(dense, ls[m] * nregs + sidx[m], sval[m])
        d2 = dense.reshape(len(gs), nregs)
        lf = local[g[frows]]
        m = np.flatnonzero(lf >= 0)
        if len(m):
            np.maximum.at(d2, lf[m], _unpack_full(p.dpad, p.start[frows[m]] + 3, pr))
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
