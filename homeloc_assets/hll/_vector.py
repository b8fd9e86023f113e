"""Vectorised batch functions over many hlls (the pipeline's hot path).

Owns ``hll_union_agg ... GROUP BY`` with its cardinality
(:func:`grouped_cardinality`, :func:`grouped_union`, :func:`grouped_union_arrow`)
over a column validated and unpacked by ``_inspect._parse`` (or given parsed:
``_inspect.parse_many``, whose rows ``ParsedColumn.take`` selects without a new parse).  The
estimator groups run in the compiled ``_kernel.c`` (:func:`_estimate_compiled`) where it was
built; the numpy estimator (:func:`_estimate_exact`) is the reference it is tested against
(:func:`use_kernel`, ``HOMELOC_HLL_KERNEL=numpy``). Everything else is numpy
and Arrow, split by storage type; there is no per-row or per-group Python loop
(the union bytes are built as Arrow arrays of many groups, see :class:`_Out`;
in the numpy path only SPARSE results whose entries are not 16 bits wide and the dense estimator's
results, both rare parameter sets, are encoded one group at a time).  Hex text is
decoded by ``_hex.unhex_many``.

Semantics follow ``_ops`` (PostgreSQL's): per group, NULL rows are skipped;
an UNDEFINED input makes the union UNDEFINED (cardinality NaN, like NULL);
EXPLICIT inputs union as sets and stay EXPLICIT (exact count) while the
union has at most the explicit threshold elements; any SPARSE/FULL input or a
larger union gives registers (max per register) and the estimator.

Vocabulary: a *row* is one input hll; a *group* one ``GROUP BY`` value; in
the estimator, a *local* group id numbers the groups of one params code
``0..n-1``; a *contribution* is one (register, value) pair that may raise a
group's register.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from ._format import (
    EMPTY,
    EXPLICIT,
    FULL,
    SPARSE,
    UNDEFINED,
    HLLError,
    Params,
    choose_compressed_type,
    encode_compressed,
)
from ._inspect import (
    _NO_ROWS,
    Bytes,
    Floats,
    Ints,
    Mask,
    _Parsed,
    _ranges,
    _unpack_full,
    params_of_code,
    parse_many,
)
from ._native import KERNEL
from ._ops import POW2_NEG, estimate_from_sums, gamma_m2, rho_and_index

__all__ = ["grouped_cardinality", "grouped_union", "grouped_union_arrow", "kernel", "use_kernel"]


class _Out:
    """The union bytes of ``n`` groups, collected as Arrow arrays of several groups at a time.

    Every piece is a ``large_binary`` array with the bytes of the groups ``ids``
    (each group at most once); :meth:`array` puts them in group order with one
    Arrow ``take`` (memcpy per value), groups without a piece null. No Python
    ``bytes`` per group.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.ids: list[Ints] = []
        self.arrays: list[pa.Array] = []

    def put(self, ids: Ints, arr: pa.Array) -> None:
        if len(ids):
            self.ids.append(np.asarray(ids, np.int64))
            self.arrays.append(arr)

    def put_list(self, ids: Ints, blobs: list[bytes]) -> None:
        self.put(ids, pa.array(blobs, pa.large_binary()))

    def array(self) -> pa.LargeBinaryArray:
        if not self.ids:
            return pa.nulls(self.n, pa.large_binary())
        ids = np.concatenate(self.ids)
        pos = np.full(self.n, -1, np.int64)
        pos[ids] = np.arange(len(ids))
        both = self.arrays[0] if len(self.arrays) == 1 else pa.concat_arrays(self.arrays)
        if len(ids) == self.n and np.array_equal(ids, np.arange(self.n)):
            return both
        return both.take(pa.array(pos, mask=pos < 0))


#: union bytes per group, collected; None when only cardinalities are wanted
UnionOut = _Out | None
_NOTHING = pa.scalar(b"", pa.large_binary())


def _binary(data: npt.NDArray[np.uint8], offsets: Ints) -> pa.LargeBinaryArray:
    """A large_binary array over ``data`` cut at ``offsets`` (n + 1, from 0), zero-copy."""
    return pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(offsets) - 1,
        [None, pa.py_buffer(np.ascontiguousarray(offsets, np.int64)),
         pa.py_buffer(np.ascontiguousarray(data, np.uint8))])


def _headers(codes: Ints, stype: int, params: dict[int, Params]) -> pa.LargeBinaryArray:
    """The 3-byte headers of storage type ``stype`` for groups of params ``codes``."""
    uniq = _distinct(codes)
    table = np.array([np.frombuffer(params[int(c)].header(stype), np.uint8) for c in uniq.tolist()],
                     np.uint8).reshape(len(uniq), 3)
    rows = table[np.searchsorted(uniq, codes)] if len(uniq) > 1 else np.broadcast_to(
        table, (len(codes), 3))
    return _binary(rows.reshape(-1), np.arange(len(codes) + 1, dtype=np.int64) * 3)


def _with_header(header: bytes, body: pa.Array) -> pa.Array:
    """``header + value`` for every value of ``body`` (one Arrow kernel)."""
    n = len(body)
    heads = _binary(np.broadcast_to(np.frombuffer(header, np.uint8), (n, len(header))).reshape(-1),
                    np.arange(n + 1, dtype=np.int64) * len(header))
    return pc.binary_join_element_wise(heads, body, _NOTHING)


# ---------------------------------------------------------------- grouped union

_SIGN = np.uint64(1 << 63)
_SCRATCH_REGS = 1 << 22  # registers per chunk of estimator groups (a 16 MiB uint32 scratch)
_NARROW_MAX = 1 << 26  # contributions per chunk numbered in a uint32 scratch; more use uint64


def _group_order(group: Ints, n_ids: int) -> Ints:
    """Stable argsort of ids in [0, n_ids) by 16-bit radix passes (numpy radix-sorts uint16)."""
    perm = None
    shift = 0
    while shift == 0 or (n_ids - 1) >> shift:
        cur = group if perm is None else group[perm]
        digit = ((cur >> shift) & 0xFFFF).astype(np.uint16)
        o = np.argsort(digit, kind="stable")
        perm = o if perm is None else perm[o]
        shift += 16
    return perm


def _distinct(codes: Ints) -> Ints:
    """Sorted distinct values of ``codes`` (params codes: nearly always one value, no sort)."""
    if not len(codes):
        return codes[:0]
    lo, hi = codes.min(), codes.max()
    return np.array([lo], codes.dtype) if lo == hi else np.unique(codes)


def _groups_with(g: Ints, mask: Mask, n_groups: int) -> Mask:
    out = np.zeros(n_groups, bool)
    out[g[mask]] = True
    return out


def _group_ids(groups: object, n_rows: int, n_groups: int | None) -> tuple[Ints, int]:
    g = np.asarray(groups, dtype=np.int64)
    if g.shape != (n_rows,):
        raise HLLError(f"groups has shape {g.shape}, expected ({n_rows},)")
    if n_rows and g.min() < 0:
        raise HLLError(f"negative group id {int(g.min())}")
    if n_groups is None:
        n_groups = int(g.max()) + 1 if n_rows else 0
    elif n_rows and g.max() >= n_groups:
        raise HLLError(f"group id {int(g.max())} >= n_groups {n_groups}")
    return g, n_groups


def _group_codes(p: _Parsed, g: Ints, n_groups: int) -> tuple[Mask, Ints]:
    """(group has rows, params code per group or -1); raises for mixed params in a group."""
    live = p.valid
    live_group, live_code = g[live], p.code[live].astype(np.int64)
    if not len(live_code) or live_code.min() == live_code.max():
        has_rows = _groups_with(g, live, n_groups)
        return has_rows, np.where(has_rows, int(live_code[0]) if len(live_code) else -1, -1)
    lowest = np.full(n_groups, 1 << 20, np.int64)
    highest = np.full(n_groups, -1, np.int64)
    np.minimum.at(lowest, live_group, live_code)
    np.maximum.at(highest, live_group, live_code)
    mixed = np.flatnonzero((highest >= 0) & (lowest != highest))
    if len(mixed):
        gi = int(mixed[0])
        a, b = params_of_code(int(lowest[gi])), params_of_code(int(highest[gi]))
        raise HLLError(f"cannot union hlls with different parameters in group {gi}: {a} vs {b}")
    has_rows = highest >= 0
    return has_rows, np.where(has_rows, highest, -1)


def _explicit_thresholds(group_code: Ints, codes: list[int]) -> Ints:
    """Per group the explicit threshold of its params (0 for groups without rows)."""
    if len(codes) == 1:
        return np.full(len(group_code), params_of_code(codes[0]).effective_expthresh, np.int64)
    threshold = np.zeros(len(group_code), np.int64)
    for c in codes:
        threshold[group_code == c] = params_of_code(c).effective_expthresh
    return threshold


def _grouped(
    blobs: object, groups: object, n_groups: int | None, want_bytes: bool
) -> tuple[Floats, UnionOut]:
    p = parse_many(blobs)
    g, n_groups = _group_ids(groups, p.n, n_groups)
    bad = np.flatnonzero(p.valid & ~p.ok)
    if len(bad):
        r = int(bad[0])
        raise HLLError(f"invalid hll in row {r} (group {int(g[r])}): {p.reason[r]}")
    has_rows, group_code = _group_codes(p, g, n_groups)
    st = p.stype
    undefined = _groups_with(g, p.valid & (st == UNDEFINED), n_groups)
    has_explicit = _groups_with(g, p.valid & (st == EXPLICIT), n_groups)
    has_registers = _groups_with(g, p.valid & ((st == SPARSE) | (st == FULL)), n_groups)

    card = np.full(n_groups, np.nan)
    out: UnionOut = _Out(n_groups) if want_bytes else None
    card[has_rows & ~undefined] = 0.0

    # ---- explicit: exact distinct counts per group
    x_group = g[p.x_rows]
    x_count = np.diff(p.x_offsets)
    x_rows_per_group = np.bincount(x_group, minlength=n_groups)
    n_values = np.bincount(x_group, weights=x_count, minlength=n_groups).astype(np.int64)
    distinct = n_values.copy()
    multi = (x_rows_per_group >= 2) & ~has_registers & ~undefined
    union_group, union_value = _explicit_union(
        p, x_group, x_count, np.flatnonzero(multi[x_group]), n_groups, distinct, want_bytes
    )
    codes = _distinct(group_code[has_rows]).tolist()
    threshold = _explicit_thresholds(group_code, codes)
    # hll.c's explicit_union keeps the first EXPLICIT value of a group as it is and
    # promotes only when a new element would pass the threshold: the union stays
    # EXPLICIT while its distinct count is at most max(threshold, first value's size)
    first_size = np.zeros(n_groups, np.int64)
    if len(x_group):  # x_rows ascend: a group's first value is its lowest position
        first_at = np.full(n_groups, len(x_group), np.int64)
        np.minimum.at(first_at, x_group, np.arange(len(x_group)))
        seen = first_at < len(x_group)
        first_size[seen] = x_count[first_at[seen]]
    stays_explicit = (has_rows & ~undefined & ~has_registers
                      & (distinct <= np.maximum(threshold, first_size)))
    card[stays_explicit] = distinct[stays_explicit]
    estimated = has_rows & ~undefined & ~stays_explicit

    if out is not None:
        params = {c: params_of_code(c) for c in codes}
        gids = np.flatnonzero(has_rows & undefined)
        out.put(gids, _headers(group_code[gids], UNDEFINED, params))
        no_values = has_rows & ~undefined & ~has_registers & (distinct == 0) & (n_values == 0)
        # only EMPTY rows, or EXPLICIT rows with no elements
        for stype, which in ((EXPLICIT, has_explicit), (EMPTY, ~has_explicit)):
            gids = np.flatnonzero(no_values & which)
            out.put(gids, _headers(group_code[gids], stype, params))
        _explicit_bytes(p, x_group, out, stays_explicit & ~multi & (n_values > 0),
                        stays_explicit & multi, union_group, union_value, group_code, params)

    # ---- estimator groups, per params code
    for c in _distinct(group_code[estimated]).tolist():
        pr = params_of_code(c)
        selected = np.flatnonzero(estimated & (group_code == c))
        gamma_m2(pr.nregs)  # raises for too few registers, like hll_cardinality
        if pr.log2m + 1 + pr.max_register <= 53:
            (_estimate_compiled if _compiled() else _estimate_exact)(p, g, selected, pr, card, out)
        else:
            _estimate_dense(p, g, selected, pr, card, out)
    return card, out


def _explicit_union(
    p: _Parsed, x_group: Ints, x_count: Ints, sel: Ints, n_groups: int, distinct: Ints,
    want_bytes: bool,
) -> tuple[Ints, Ints]:
    """Subtract duplicates from ``distinct`` for the EXPLICIT rows ``p.x_rows[sel]``.

    Values are sorted by (group, value) with one stable int64 argsort of
    ``group << (64 - b) | value >> b`` over rows put in group order first (so
    the keys are ascending runs); equal keys are then told apart by the full
    value, and a fallback lexsort covers the (adversarial) case where equal
    keys hold unsorted values.  Returns the distinct (group, value) pairs in
    order when ``want_bytes``.
    """
    if not len(sel):
        return _NO_ROWS, _NO_ROWS
    rows = sel[_group_order(x_group[sel], n_groups)]
    count = x_count[rows]
    # values as uint64 whose order is the int64 order
    values = p.x_values[_ranges(p.x_offsets[rows], count)].view(np.uint64) ^ _SIGN
    group_bits = max(1, int(n_groups - 1).bit_length())
    if group_bits <= 48:
        packed = _union_by_packed_keys(x_group[rows], count, values, group_bits, n_groups,
                                       distinct, want_bytes)
        if packed is not None:
            return packed
    value_group = np.repeat(x_group[rows], count)
    order = np.lexsort((values, value_group))
    sorted_values, sorted_groups = values[order], value_group[order]
    dup = (sorted_groups[1:] == sorted_groups[:-1]) & (sorted_values[1:] == sorted_values[:-1])
    distinct -= np.bincount(sorted_groups[1:][dup], minlength=n_groups)
    if not want_bytes:
        return _NO_ROWS, _NO_ROWS
    keep = np.ones(len(sorted_values), bool)
    keep[1:] = ~dup
    return sorted_groups[keep], (sorted_values[keep] ^ _SIGN).view(np.int64)


def _union_by_packed_keys(
    row_group: Ints, count: Ints, values: npt.NDArray[np.uint64], group_bits: int,
    n_groups: int, distinct: Ints, want_bytes: bool,
) -> tuple[Ints, Ints] | None:
    """The fast path of :func:`_explicit_union`; None when equal keys hold unsorted values."""
    shift = np.uint64(64 - group_bits)
    key = np.repeat(row_group.astype(np.uint64) << shift, count)
    key |= values >> np.uint64(group_bits)
    order = np.argsort(key, kind="stable")
    sorted_keys = key[order]
    if not want_bytes:
        # only the (few) pairs of equal keys need their full values
        equal = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
        v0, v1 = values[order[equal]], values[order[equal + 1]]
        if (v1 < v0).any():
            return None
        dup_group = (sorted_keys[1:][equal[v1 == v0]] >> shift).astype(np.int64)
        distinct -= np.bincount(dup_group, minlength=n_groups)
        return _NO_ROWS, _NO_ROWS
    sorted_values = values[order]
    equal_key = sorted_keys[1:] == sorted_keys[:-1]
    if (equal_key & (sorted_values[1:] < sorted_values[:-1])).any():
        return None
    dup = equal_key & (sorted_values[1:] == sorted_values[:-1])
    distinct -= np.bincount((sorted_keys[1:][dup] >> shift).astype(np.int64), minlength=n_groups)
    keep = np.ones(len(sorted_values), bool)
    keep[1:] = ~dup
    return (sorted_keys[keep] >> shift).astype(np.int64), (sorted_values[keep] ^ _SIGN).view(np.int64)


def _explicit_bytes(
    p: _Parsed, x_group: Ints, out: _Out, single: Mask, multi_result: Mask,
    union_group: Ints, union_value: Ints, group_code: Ints, params: dict[int, Params],
) -> None:
    """Union bytes of groups that stay EXPLICIT: one row's bytes, or the union's values."""
    pick = np.flatnonzero(single[x_group])
    if len(pick):
        out.put(x_group[pick], p.values(p.x_rows[pick]))
    if not len(union_group):
        return
    m = multi_result[union_group]
    groups = union_group[m]
    if not len(groups):  # every multi-row group went past the threshold
        return
    vals = union_value[m].astype(">i8")
    starts = np.concatenate([[0], np.flatnonzero(np.diff(groups)) + 1])
    gids = groups[starts]
    ends = np.append(starts[1:], len(groups)).astype(np.int64)
    body = _binary(vals.view(np.uint8), np.concatenate([[0], ends]) * 8)
    out.put(gids, pc.binary_join_element_wise(_headers(group_code[gids], EXPLICIT, params),
                                              body, _NOTHING))


def _packed_regs(padded: Bytes, payload_start: Ints, reg: Ints, w: int) -> Bytes:
    """Register ``reg`` of FULL payloads starting at ``payload_start`` (element-wise)."""
    bit = reg.astype(np.int64) * w
    b = payload_start + (bit >> 3)
    two = (padded[b].astype(np.uint16) << 8) | padded[b + 1]
    return ((two >> (16 - w - (bit & 7)).astype(np.uint16)) & ((1 << w) - 1)).astype(np.uint8)


def _full_sums(payloads: Bytes, pr: Params, weight: Ints) -> tuple[Ints, Ints]:
    """Per FULL payload (rows of ``payloads``): (sum of weight[register], zero registers).

    Eight registers are ``regwidth`` whole bytes; each such group is read as one
    integer and split into four pairs of registers, each looked up in one table
    (sum and zero count packed in one int64 when they fit), without unpacking
    the registers.
    """
    w, m, log2m = pr.regwidth, pr.nregs, pr.log2m
    pair_bits = 2 * w
    weight_of = np.zeros(1 << w, np.int64)
    weight_of[: len(weight)] = weight
    pair = np.arange(1 << pair_bits)
    hi, lo = pair >> w, pair & ((1 << w) - 1)
    pair_sum = weight_of[hi] + weight_of[lo]
    pair_zeros = (hi == 0).astype(np.int64) + (lo == 0)
    zeros_shift = log2m + pr.max_register + 1
    both = zeros_shift + log2m + 1 <= 63  # sum and zero count fit one int64
    table = pair_sum + (pair_zeros << zeros_shift) if both else pair_sum
    n = len(payloads)
    sums = np.empty(n, np.int64)
    zeros = np.empty(n, np.int64)
    groups_of_8 = payloads.reshape(n, m // 8, w)
    pair_mask = np.uint64((1 << pair_bits) - 1)
    step = max(1, (1 << 18) // (m // 8))
    for a in range(0, n, step):
        block = groups_of_8[a : a + step]
        word = block[:, :, 0].astype(np.uint64)
        for i in range(1, w):
            word <<= np.uint64(8)
            word |= block[:, :, i]
        total = np.zeros(len(block), np.int64)
        zero_total = np.zeros(len(block), np.int64)
        for j in range(4):
            pairs = ((word >> np.uint64(pair_bits * (3 - j))) & pair_mask).astype(np.intp)
            total += table[pairs].sum(axis=1)
            if not both:
                zero_total += pair_zeros[pairs].sum(axis=1)
        if both:
            sums[a : a + step] = total & ((1 << zeros_shift) - 1)
            zeros[a : a + step] = total >> zeros_shift
        else:
            sums[a : a + step] = total
            zeros[a : a + step] = zero_total
    return sums, zeros


# ---------------------------------------------------------------- estimator, exact sums


def _sorted_by(local: Ints, ids: Ints, n_local: int, n_chunks: int) -> Ints:
    """``ids`` ordered by their ``local`` group (only needed with more than one chunk)."""
    return ids if n_chunks == 1 or not len(ids) else ids[_group_order(local[ids], n_local)]


@dataclass
class _Sources:
    """The rows of one params code that feed the selected groups, by storage type.

    ``*_local`` is the local group of every row of that kind (-1: not selected);
    ``x_live`` / ``s_live`` / ``f_live`` index the rows of selected groups.
    EXPLICIT rows index ``p.x_rows``, SPARSE rows the code's segment
    ``p.s_rows[s_lo:s_hi]``, FULL rows ``full_rows``.
    """

    x_local: Ints
    x_live: Ints
    x_count: Ints
    s_lo: int
    s_hi: int
    s_local: Ints
    s_live: Ints
    s_count: Ints
    full_rows: Ints
    f_local: Ints
    f_live: Ints
    f_payload: Ints  # payload start of every FULL row

    def renumber(self, new_id: Ints) -> None:
        """Apply ``new_id`` (old local id -> new; ``new_id[-1] == -1`` keeps -1) to all rows."""
        self.x_local, self.s_local, self.f_local = (
            new_id[self.x_local], new_id[self.s_local], new_id[self.f_local])


def _sources(p: _Parsed, g: Ints, selected: Ints, n_groups: int, code: int) -> _Sources:
    local = np.full(n_groups, -1, np.int64)
    local[selected] = np.arange(len(selected))
    x_local = local[g[p.x_rows]]
    s_lo, s_hi = p.sparse_segment(code)
    s_local = local[g[p.s_rows[s_lo:s_hi]]]
    full_rows = p.full_rows.get(code, _NO_ROWS)
    f_local = local[g[full_rows]]
    return _Sources(
        x_local, np.flatnonzero(x_local >= 0), np.diff(p.x_offsets),
        s_lo, s_hi, s_local, np.flatnonzero(s_local >= 0), np.diff(p.s_offsets[s_lo : s_hi + 1]),
        full_rows, f_local, np.flatnonzero(f_local >= 0), p.start[full_rows] + 3,
    )


@dataclass
class _BaseRows:
    """Per group one *base* row whose registers are read in place: a FULL row, else a SPARSE row."""

    full_base_of: Ints  # per local group: its base FULL row, -1 if none
    f_base: Ints  # base FULL rows
    f_extra: Ints  # the other FULL rows of selected groups
    s_base: Ints  # base SPARSE rows (segment-relative)
    s_extra: Ints  # the other SPARSE rows of selected groups
    n_s_base_read: int  # the first ones of ``s_base`` whose entries are read


def _base_rows(src: _Sources, n_local: int) -> _BaseRows:
    full_base_of = np.full(n_local, -1, np.int64)
    full_base_of[src.f_local[src.f_live]] = src.f_live  # one of each group's FULL rows wins
    is_base = full_base_of[src.f_local[src.f_live]] == src.f_live
    f_base, f_extra = src.f_live[is_base], src.f_live[~is_base]
    sparse_base_of = np.full(n_local, -1, np.int64)
    candidates = src.s_live[full_base_of[src.s_local[src.s_live]] < 0]
    sparse_base_of[src.s_local[candidates]] = candidates
    s_base = candidates[sparse_base_of[src.s_local[candidates]] == candidates]
    is_base = np.zeros(src.s_hi - src.s_lo, bool)
    is_base[s_base] = True
    s_extra = src.s_live[~is_base[src.s_live]]
    return _BaseRows(full_base_of, f_base, f_extra, s_base, s_extra, len(s_base))


def _renumber_groups(src: _Sources, base: _BaseRows, n_local: int, all_read: bool) -> Ints:
    """Renumber the local groups so that those with a base SPARSE row come first.

    They are numbered in the order of that row, those with contributions of
    other rows first (unless ``all_read``: the union bytes need every base
    row), so that the base rows of a chunk of groups are one span of the
    stored SPARSE entries. Returns the order (new id -> old id).
    """
    contributed = np.zeros(n_local, bool)
    contributed[src.x_local[src.x_live]] = True
    contributed[src.s_local[base.s_extra]] = True
    contributed[src.f_local[base.f_extra]] = True
    if not all_read:  # only the base rows of groups with contributions are read
        read = contributed[src.s_local[base.s_base]]
        base.s_base = np.concatenate([base.s_base[read], base.s_base[~read]])
        base.n_s_base_read = int(np.count_nonzero(read))
    rest = np.ones(n_local, bool)
    rest[src.s_local[base.s_base]] = False
    order = np.concatenate([src.s_local[base.s_base], np.flatnonzero(rest)])
    new_id = np.empty(n_local + 1, np.int64)
    new_id[order] = np.arange(n_local)
    new_id[n_local] = -1
    src.renumber(new_id)
    base.full_base_of = base.full_base_of[order]
    return order


def _base_sums(
    p: _Parsed, pr: Params, src: _Sources, base: _BaseRows, weight: Ints, n_local: int
) -> tuple[Floats, Ints]:
    """(register sum scaled by 2**max_register, zero registers) per local group of its base row."""
    m, unit = pr.nregs, int(weight[0])
    reg_sum = np.full(n_local, float(m * unit))
    zero_regs = np.full(n_local, m, np.int64)
    if len(base.s_base):
        lo, hi = src.s_lo, src.s_hi
        e0, e1 = int(p.s_offsets[lo]), int(p.s_offsets[hi])
        row_sum = np.empty(hi - lo, np.int64)
        step = max(1, (hi - lo) * (1 << 20) // max(1, e1 - e0))  # ~1M entries per block
        for r0 in range(lo, hi, step):
            r1 = min(hi, r0 + step)
            f0 = int(p.s_offsets[r0])
            row_sum[r0 - lo : r1 - lo] = np.add.reduceat(
                weight[p.s_value[f0 : int(p.s_offsets[r1])]], p.s_offsets[r0:r1] - f0)
        filled = src.s_count[base.s_base]
        reg_sum[src.s_local[base.s_base]] = row_sum[base.s_base] + (m - filled) * unit
        zero_regs[src.s_local[base.s_base]] = m - filled
    if len(base.f_base):
        rows = src.full_rows[base.f_base]
        sums, zeros = _full_sums(p.payloads(rows).reshape(len(rows), -1), pr, weight)
        reg_sum[src.f_local[base.f_base]] = sums
        zero_regs[src.f_local[base.f_base]] = zeros
    return reg_sum, zero_regs


@dataclass
class _Chunking:
    """Local groups cut into chunks of ``size`` groups, and each kind's rows per chunk."""

    size: int
    count: int
    x_rows: Ints  # EXPLICIT contributions, in chunk order
    s_rows: Ints  # other SPARSE rows
    f_rows: Ints  # other FULL rows
    f_base: Ints  # base FULL rows (read only for the union bytes)
    cuts: dict[str, Ints]

    def part(self, name: str, ids: Ints, chunk: int) -> Ints:
        cut = self.cuts[name]
        return ids[cut[chunk] : cut[chunk + 1]]


def _chunking(src: _Sources, base: _BaseRows, pr: Params, n_local: int, with_bytes: bool) -> _Chunking:
    size = max(1, _SCRATCH_REGS >> pr.log2m)
    count = -(-n_local // size)
    x_rows = _sorted_by(src.x_local, src.x_live, n_local, count)
    s_rows = _sorted_by(src.s_local, base.s_extra, n_local, count)
    f_rows = _sorted_by(src.f_local, base.f_extra, n_local, count)
    f_base = _sorted_by(src.f_local, base.f_base, n_local, count) if with_bytes else base.f_base[:0]
    bounds = np.arange(0, n_local + size, size)
    cuts = {
        name: np.searchsorted(local[ids], bounds) if count > 1 else np.array([0, len(ids)])
        for name, ids, local in (("x", x_rows, src.x_local), ("s", s_rows, src.s_local),
                                 ("f", f_rows, src.f_local), ("fb", f_base, src.f_local))
    }
    return _Chunking(size, count, x_rows, s_rows, f_rows, f_base, cuts)


def _contributions(
    p: _Parsed, pr: Params, src: _Sources, ch: _Chunking, chunk: int, c0: int
) -> tuple[Ints, Bytes]:
    """(register within the chunk, value) of every contribution to groups of ``chunk``.

    A register within the chunk is ``(local group - c0) << log2m | register``.
    """
    log2m = pr.log2m
    regs, vals = [], []
    rows = ch.part("x", ch.x_rows, chunk)
    if len(rows):
        count = src.x_count[rows]
        index, rho = rho_and_index(p.x_values[_ranges(p.x_offsets[rows], count)], log2m, pr.regwidth)
        keep = rho > 0
        regs.append((np.repeat((src.x_local[rows] - c0) << log2m, count) + index)[keep])
        vals.append(rho[keep])
    rows = ch.part("s", ch.s_rows, chunk)
    if len(rows):
        count = src.s_count[rows]
        entries = _ranges(p.s_offsets[src.s_lo + rows], count)
        regs.append(np.repeat((src.s_local[rows] - c0) << log2m, count) + p.s_index[entries])
        vals.append(p.s_value[entries])
    rows = ch.part("f", ch.f_rows, chunk)
    if len(rows):
        unpacked = _unpack_full(p.padded, src.f_payload[rows], pr)
        nz_row, nz_reg = np.nonzero(unpacked)
        regs.append(((src.f_local[rows][nz_row] - c0) << log2m) + nz_reg)
        vals.append(unpacked[nz_row, nz_reg])
    if not regs:
        return np.zeros(0, np.int64), np.zeros(0, np.uint8)
    if len(regs) == 1:
        return regs[0], vals[0]
    return np.concatenate(regs), np.concatenate(vals)


def _base_sparse_entries(
    p: _Parsed, pr: Params, src: _Sources, base: _BaseRows, is_read: Mask,
    c0: int, c1: int, dummy: int,
) -> tuple[Ints, Bytes]:
    """(register within the chunk, value) of the base SPARSE entries of groups ``c0..c1-1``.

    They are one span of stored entries; rows in between that are not read
    point to a dummy block of m registers past the chunk (never touched, so
    always 0).
    """
    if c0 >= base.n_s_base_read:
        return np.zeros(0, np.int64), np.zeros(0, np.uint8)
    r0 = int(base.s_base[c0])
    r1 = int(base.s_base[min(c1, base.n_s_base_read) - 1]) + 1
    row_reg = np.where(is_read[r0:r1], (src.s_local[r0:r1] - c0) << pr.log2m, dummy)
    e0, e1 = int(p.s_offsets[src.s_lo + r0]), int(p.s_offsets[src.s_lo + r1])
    return np.repeat(row_reg, src.s_count[r0:r1]) + p.s_index[e0:e1], p.s_value[e0:e1]


class _Scratch:
    """Registers of a chunk of groups, all 0 between uses: a uint32 one, a uint64 one on demand.

    A contribution is stored as ``value << tag_bits | its number``, so after
    one ``maximum.at`` each touched register has exactly one winner.
    """

    def __init__(self, size: int) -> None:
        self.narrow = np.zeros(size, np.uint32)
        self.wide: npt.NDArray[np.uint64] | None = None

    def for_count(self, n: int) -> tuple[np.ndarray, int]:
        if n < _NARROW_MAX:
            return self.narrow, 26
        if self.wide is None:
            self.wide = np.zeros(len(self.narrow), np.uint64)
        return self.wide, 40


def _apply_contributions(
    p: _Parsed, pr: Params, src: _Sources, base: _BaseRows, scratch: _Scratch,
    touched: Ints, value: Bytes, base_reg: Ints, base_val: Bytes,
    reg_sum: Floats, zero_regs: Ints, c0: int, c1: int,
) -> tuple[Ints, Bytes]:
    """Lower the base sums of groups ``c0..c1-1`` by every register a contribution raises.

    Returns (register within the chunk, new value) of each touched register.
    """
    log2m, weight = pr.log2m, _weights(pr)
    regs, tag_bits = scratch.for_count(len(touched))
    dt = regs.dtype.type
    tagged = (value.astype(regs.dtype) << dt(tag_bits)) | np.arange(len(touched), dtype=regs.dtype)
    np.maximum.at(regs, touched, tagged)
    winner = regs[touched] == tagged  # exactly one winner per touched register
    # old (base) values: base SPARSE entries at touched registers tell their winner
    old = np.zeros(len(touched), np.uint8)
    if len(base_reg):
        hit = regs[base_reg]
        at = np.flatnonzero(hit)
        old[(hit[at] & dt((1 << tag_bits) - 1)).astype(np.int64)] = base_val[at]
    regs[touched] = 0
    reg, new, old = touched[winner], value[winner], old[winner]
    group = reg >> log2m
    full_base = base.full_base_of[c0 + group]
    has_full = np.flatnonzero(full_base >= 0)
    if len(has_full):
        old[has_full] = _packed_regs(p.padded, src.f_payload[full_base[has_full]],
                                     reg[has_full] & (pr.nregs - 1), pr.regwidth)
    new = np.maximum(new, old)
    reg_sum[c0:c1] -= np.bincount(group, weights=weight[old] - weight[new], minlength=c1 - c0)
    zero_regs[c0:c1] -= np.bincount(group[(old == 0) & (new > 0)], minlength=c1 - c0)
    return reg, new


def _weights(pr: Params) -> Ints:
    """``2**-r`` scaled by ``2**max_register`` for r = 0..max_register, as int64."""
    mr = pr.max_register
    return np.left_shift(np.int64(1), mr - np.arange(mr + 1, dtype=np.int64))


def _estimate_exact(
    p: _Parsed, g: Ints, selected: Ints, pr: Params, card: Floats, out: UnionOut
) -> None:
    """Estimator for the groups ``selected`` when every register sum is exact in any order.

    With ``log2m + 1 + max_register <= 53`` every partial sum of 2**-r over
    registers is a multiple of 2**-max_register below 2**(log2m+1), so the
    sequential double sum of hll.c is the exact rational sum.  We compute it as
    integers scaled by 2**max_register: one *base* compressed row per group (a
    FULL row if any, else a SPARSE row; its sum read straight from its bytes),
    plus the changes made by all other contributions (explicit hashes, other
    SPARSE entries, other FULL registers): per touched (group, register) the
    maximum (one ``maximum.at`` into a reusable scratch, see :class:`_Scratch`)
    and its old base value (base SPARSE entries read the scratch), chunk by
    chunk.  No groups x registers matrix is built (only when union bytes are
    wanted).
    """
    m, n_local = pr.nregs, len(selected)
    src = _sources(p, g, selected, len(card), pr.code)
    base = _base_rows(src, n_local)
    order = _renumber_groups(src, base, n_local, all_read=out is not None)
    selected = selected[order]
    reg_sum, zero_regs = _base_sums(p, pr, src, base, _weights(pr), n_local)

    ch = _chunking(src, base, pr, n_local, with_bytes=out is not None)
    dummy = min(n_local, ch.size) * m
    is_read = np.zeros(src.s_hi - src.s_lo, bool)
    is_read[base.s_base[: base.n_s_base_read]] = True
    scratch = _Scratch(dummy + m)
    for chunk, c0 in enumerate(range(0, n_local, ch.size)):
        c1 = min(n_local, c0 + ch.size)
        touched, value = _contributions(p, pr, src, ch, chunk, c0)
        base_reg, base_val = _base_sparse_entries(p, pr, src, base, is_read, c0, c1, dummy)
        if len(touched):
            touched, value = _apply_contributions(p, pr, src, base, scratch, touched, value,
                                                  base_reg, base_val, reg_sum, zero_regs, c0, c1)
        if out is not None:
            dense = np.zeros(dummy + m, np.uint8)
            dense[base_reg] = base_val
            dense = dense[: (c1 - c0) * m]
            full_base = ch.part("fb", ch.f_base, chunk)
            if len(full_base):
                dense.reshape(c1 - c0, m)[src.f_local[full_base] - c0] = _unpack_full(
                    p.padded, src.f_payload[full_base], pr)
            if len(touched):
                dense[touched] = value
            _pack_groups(pr, dense.reshape(c1 - c0, m), selected[c0:c1], m - zero_regs[c0:c1], out)
    sums = reg_sum * np.ldexp(1.0, -pr.max_register)
    card[selected] = estimate_from_sums(pr, sums, zero_regs)


def _pack_full(regs: Bytes, w: int) -> Bytes:
    """FULL payloads (registers as one big-endian bit stream, ``w`` bits each) of register rows.

    Eight registers are exactly ``w`` bytes: each such group is built as one integer
    and cut into its bytes (no per-bit arrays); rows of other lengths bit by bit.
    """
    k, m = regs.shape
    if m % 8:
        bits = np.unpackbits(regs[:, :, None], axis=2)[:, :, 8 - w :].reshape(k, m * w)
        return np.packbits(bits, axis=1)
    eight = regs.reshape(k, m // 8, 8)
    word = eight[:, :, 0].astype(np.uint64)
    for i in range(1, 8):
        word <<= np.uint64(w)
        word |= eight[:, :, i]
    out = np.empty((k, m // 8, w), np.uint8)
    for j in range(w):
        out[:, :, j] = word >> np.uint64(8 * (w - 1 - j))
    return out.reshape(k, m // 8 * w)


def _nonzero_bytes(regs: Bytes) -> Ints:
    """``np.flatnonzero(regs)`` (ascending), read 8 registers at a time.

    SPARSE results are mostly zero registers: scanning the matrix as uint64
    words and only the non-zero words byte by byte is several times faster.
    """
    flat = np.ascontiguousarray(regs).reshape(-1)
    if len(flat) % 8:
        return np.flatnonzero(flat)
    words = np.flatnonzero(flat.view(np.uint64))
    at = np.flatnonzero(flat.reshape(-1, 8)[words])
    return words[at >> 3] * 8 + (at & 7)


def _pack_groups(pr: Params, regs: Bytes, group_ids: Ints, n_filled: Ints, out: _Out) -> None:
    """Union bytes (SPARSE or FULL, as hll.c ``multiset_pack``) of register rows ``regs``."""
    w, log2m, m = pr.regwidth, pr.log2m, pr.nregs
    sparse = n_filled * (log2m + w) < m * w if pr.sparseon else np.zeros(len(group_ids), bool)
    full_at = np.flatnonzero(~sparse)
    if len(full_at):
        packed = _pack_full(regs[full_at], w)
        width = packed.shape[1]
        body = _binary(packed.reshape(-1), np.arange(len(full_at) + 1, dtype=np.int64) * width)
        out.put(group_ids[full_at], _with_header(pr.header(FULL), body))
    sparse_at = np.flatnonzero(sparse)
    if not len(sparse_at):
        return
    if log2m + w == 16:
        sub = regs if len(sparse_at) == len(regs) else regs[sparse_at]
        flat = _nonzero_bytes(sub)
        value = sub.reshape(-1)[flat]
        r, c = flat >> log2m, (flat & (m - 1)).astype(np.uint32)
        fields = ((c << np.uint32(w)) | value).astype(">u2")
        ends = np.cumsum(np.bincount(r, minlength=len(sparse_at)))
        body = _binary(fields.view(np.uint8), np.concatenate([[0], ends]).astype(np.int64) * 2)
        out.put(group_ids[sparse_at], _with_header(pr.header(SPARSE), body))
    else:
        out.put_list(group_ids[sparse_at],
                     [encode_compressed(pr, regs[i], SPARSE) for i in sparse_at.tolist()])


# ---------------------------------------------------------------- estimator, compiled

KERNELS = ("compiled", "numpy")
_OUT_BYTES = 8 << 20  # union bytes written per kernel call (at most)
_EMPTY_U8 = np.zeros(0, np.uint8)
_EMPTY_I64 = np.zeros(0, np.int64)


def _kernel_from_env() -> str:
    name = os.environ.get("HOMELOC_HLL_KERNEL", "").strip().lower()
    default = "compiled" if KERNEL is not None else "numpy"
    if name and name not in KERNELS:
        warnings.warn(f"HOMELOC_HLL_KERNEL={name!r} is not one of {', '.join(KERNELS)}; "
                      f"using {default}", stacklevel=2)
    return name if name in KERNELS else default


_CHOSEN = _kernel_from_env()


def kernel() -> str:
    """The grouped union in use: ``compiled`` (``_kernel.c``) or ``numpy`` (the reference).

    ``HOMELOC_HLL_KERNEL`` chooses; unset, the compiled kernel where it was built.
    """
    return _CHOSEN


@contextlib.contextmanager
def use_kernel(name: str) -> Iterator[None]:
    """Run the grouped functions with kernel ``name`` inside the block (tests, benchmarks)."""
    global _CHOSEN
    if name not in KERNELS:
        raise HLLError(f"unknown hll kernel {name!r}: use one of {', '.join(KERNELS)}")
    if name == "compiled" and KERNEL is None:
        raise HLLError("the compiled hll kernel is not built (run `make setup`)")
    before, _CHOSEN = _CHOSEN, name
    try:
        yield
    finally:
        _CHOSEN = before


def _compiled() -> bool:
    if _CHOSEN == "numpy":
        return False
    if KERNEL is None:
        raise HLLError("HOMELOC_HLL_KERNEL=compiled, but the compiled hll kernel is not "
                       "built (run `make setup`)")
    return True


def _estimate_compiled(
    p: _Parsed, g: Ints, selected: Ints, pr: Params, card: Floats, out: UnionOut
) -> None:
    """:func:`_estimate_exact` by the compiled kernel: same cardinalities, same bytes.

    Lists every row of the groups ``selected`` (one params code) as (kind, lo, hi) in
    group order; the kernel unions each group's rows in one m-byte register array.
    """
    n_local = len(selected)
    local = np.full(len(card), -1, np.int64)
    local[selected] = np.arange(n_local)
    ids, kinds, los, his = [], [], [], []

    def rows_of(kind: int, row_local: Ints, lo: Ints, hi: Ints) -> None:
        at = np.flatnonzero(row_local >= 0)
        if len(at):
            ids.append(row_local[at])
            kinds.append(np.full(len(at), kind, np.uint8))
            los.append(lo[at])
            his.append(hi[at])

    if len(p.x_rows):
        rows_of(2, local[g[p.x_rows]], p.x_offsets[:-1], p.x_offsets[1:])
    s_lo, s_hi = p.sparse_segment(pr.code)
    if s_hi > s_lo:
        rows_of(0, local[g[p.s_rows[s_lo:s_hi]]], p.s_offsets[s_lo:s_hi],
                p.s_offsets[s_lo + 1 : s_hi + 1])
    full_rows = p.full_rows.get(pr.code, _NO_ROWS)
    if len(full_rows):
        payload = p.start[full_rows] + 3
        rows_of(1, local[g[full_rows]], payload, payload)
    if ids:
        row_local = np.concatenate(ids) if len(ids) > 1 else ids[0]
        kind, lo, hi = (np.concatenate(k) if len(k) > 1 else k[0] for k in (kinds, los, his))
        if len(ids) > 1 or (row_local[1:] < row_local[:-1]).any():  # rows are often in group order
            order = _group_order(row_local, n_local)
            kind, lo, hi = kind[order], lo[order], hi[order]
        lo, hi = np.ascontiguousarray(lo, np.int64), np.ascontiguousarray(hi, np.int64)
        count = np.bincount(row_local, minlength=n_local)
    else:
        kind, lo, hi, count = _EMPTY_U8, _EMPTY_I64, _EMPTY_I64, np.zeros(n_local, np.int64)
    grp_off = np.zeros(n_local + 1, np.int64)
    np.cumsum(count, out=grp_off[1:])
    s_index = p.s_index
    if s_index.dtype.itemsize not in (2, 4) or not s_index.flags.c_contiguous:
        s_index = np.ascontiguousarray(s_index, np.int32)
    args = (grp_off, kind, lo, hi, s_index, s_index.dtype.itemsize,
            np.ascontiguousarray(p.s_value, np.uint8), p.padded,
            np.ascontiguousarray(p.x_values, np.int64), pr.log2m, pr.regwidth, pr.sparseon)
    heads = (pr.header(SPARSE), pr.header(FULL))
    reg_sum = np.empty(n_local, np.int64)
    zeros = np.empty(n_local, np.int64)
    if out is None:
        KERNEL.union_groups(*args, 0, n_local, *heads, reg_sum, zeros, _EMPTY_U8, _EMPTY_I64)
    elif n_local:
        per_group = 3 + (pr.nregs * pr.regwidth + 7) // 8  # FULL, the largest a union can be
        step = max(1, _OUT_BYTES // per_group)
        buf = np.empty(min(n_local, step) * per_group, np.uint8)
        offsets = np.empty(min(n_local, step) + 1, np.int64)
        for c0 in range(0, n_local, step):
            c1 = min(n_local, c0 + step)
            used = KERNEL.union_groups(*args, c0, c1, *heads, reg_sum, zeros, buf, offsets)
            out.put(selected[c0:c1], _binary(buf[:used].copy(), offsets[: c1 - c0 + 1].copy()))
    card[selected] = estimate_from_sums(pr, reg_sum * np.ldexp(1.0, -pr.max_register), zeros)


# ---------------------------------------------------------------- estimator, dense


def _estimate_dense(
    p: _Parsed, g: Ints, selected: Ints, pr: Params, card: Floats, out: UnionOut
) -> None:
    """Estimator via a (groups x registers) matrix and the sequential register sum.

    Used when the register sum is not provably exact in any order
    (``log2m + 1 + max_register > 53``, i.e. regwidth >= 6 with large log2m).
    """
    nregs = pr.nregs
    local = np.full(len(card), -1, np.int64)
    value_row = p.x_value_rows()
    lo, hi = p.sparse_segment(pr.code)
    e0, e1 = int(p.s_offsets[lo]), int(p.s_offsets[hi])
    entry_row = np.repeat(p.s_rows[lo:hi], np.diff(p.s_offsets[lo : hi + 1]))
    s_index, s_value = p.s_index[e0:e1], p.s_value[e0:e1]
    full_rows = p.full_rows.get(pr.code, _NO_ROWS)
    chunk = max(1, (1 << 25) // nregs)
    for c0 in range(0, len(selected), chunk):
        groups = selected[c0 : c0 + chunk]
        local[:] = -1
        local[groups] = np.arange(len(groups))
        dense = np.zeros(len(groups) * nregs, np.uint8)
        value_local = local[g[value_row]]
        m = value_local >= 0
        if m.any():
            index, rho = rho_and_index(p.x_values[m], pr.log2m, pr.regwidth)
            np.maximum.at(dense, value_local[m] * nregs + index, rho)
        entry_local = local[g[entry_row]]
        m = entry_local >= 0
        if m.any():
            np.maximum.at(dense, entry_local[m] * nregs + s_index[m], s_value[m])
        regs = dense.reshape(len(groups), nregs)
        full_local = local[g[full_rows]]
        at = np.flatnonzero(full_local >= 0)
        if len(at):
            np.maximum.at(regs, full_local[at], _unpack_full(p.padded, p.start[full_rows[at]] + 3, pr))
        sums = np.cumsum(POW2_NEG[regs], axis=1)[:, -1]  # sequential like the C loop
        zeros = nregs - np.count_nonzero(regs, axis=1)
        card[groups] = estimate_from_sums(pr, sums, zeros)
        if out is not None:
            n_filled = nregs - zeros
            out.put_list(groups, [encode_compressed(pr, regs[i], choose_compressed_type(pr, int(n_filled[i])))
                                  for i in range(len(groups))])


# ---------------------------------------------------------------- public


def grouped_cardinality(blobs: object, groups: object, n_groups: int | None = None) -> Floats:
    """Per group ``hll_cardinality(hll_union_agg(hll))``; NaN for groups without rows or UNDEFINED.

    Raises HLLError for invalid rows (null rows are skipped) and for mixed
    parameters inside a group (naming the group id).
    """
    card, _ = _grouped(blobs, groups, n_groups, want_bytes=False)
    return card


def grouped_union(
    blobs: object, groups: object, n_groups: int | None = None
) -> tuple[Floats, list[bytes | None]]:
    """Like :func:`grouped_cardinality`, plus the union bytes per group (None where no rows)."""
    card, out = grouped_union_arrow(blobs, groups, n_groups)
    return card, out.to_pylist()


def grouped_union_arrow(
    blobs: object, groups: object, n_groups: int | None = None
) -> tuple[Floats, pa.LargeBinaryArray]:
    """Like :func:`grouped_union`, with the union bytes as one Arrow ``large_binary`` array
    (null where a group has no rows): no Python object per group."""
    card, out = _grouped(blobs, groups, n_groups, want_bytes=True)
    assert out is not None
    return card, out.array()
