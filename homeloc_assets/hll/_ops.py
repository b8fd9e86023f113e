"""Scalar hll operations with postgresql-hll semantics: cardinality, union, add, empty, describe.

This module owns the set algebra of hll.c (``multiset_union``,
``multiset_add``, the promotion EXPLICIT -> SPARSE/FULL) and the estimator
(``multiset_card``).  The estimator is shared with the vectorised code in
``_vector`` through :func:`estimate_from_sums`, so both give the same doubles.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from ._format import (
    EMPTY,
    EXPLICIT,
    FULL,
    HLL,
    SPARSE,
    UNDEFINED,
    HLLError,
    Params,
    check_params,
    choose_compressed_type,
    decode,
    encode_compressed,
)

# 2**-r for every register value (exact doubles), as hll.c's 1.0 / (1L << r).
POW2_NEG = np.ldexp(1.0, -np.arange(256)).astype(np.float64)


def gamma_m2(nregs: int) -> float:
    """hll.c ``gamma_register_count_squared`` (same evaluation order, same double)."""
    if nregs <= 8:
        raise HLLError(f"number of registers too small for an estimate: {nregs} (log2m must be >= 4)")
    if nregs == 16:
        return 0.673 * nregs * nregs
    if nregs == 32:
        return 0.697 * nregs * nregs
    if nregs == 64:
        return 0.709 * nregs * nregs
    return (0.7213 / (1.0 + 1.079 / nregs)) * nregs * nregs


def estimate_from_sums(p: Params, sums: np.ndarray, zero_counts: np.ndarray) -> np.ndarray:
    """hll.c ``multiset_card`` for compressed multisets, vectorised over many hlls.

    ``sums`` is the sequential sum of 2**-register over all registers,
    ``zero_counts`` the number of zero registers.

    PostgreSQL computes ``1ULL << (2**regwidth - 2 + log2m)``; for regwidth >= 6
    the shift exceeds 63 and x86-64 masks it to 6 bits, which makes the
    large-range correction kick in early (and yield NaN past 2**(shift & 63)).
    We reproduce that arithmetic exactly so results equal hll_cardinality,
    NaN included (documented quirk; regwidth <= 5 is unaffected).
    """
    nregs = p.nregs
    g = gamma_m2(nregs)
    total_bits = ((1 << p.regwidth) - 2) + p.log2m
    two_to_l_u = (1 << (total_bits & 63)) & 0xFFFFFFFFFFFFFFFF
    two_to_l = float(two_to_l_u)
    signed = two_to_l_u - (1 << 64) if two_to_l_u >= (1 << 63) else two_to_l_u
    neg_two_to_l = float(-signed if signed != -(1 << 63) else signed)
    cutoff = two_to_l / 30.0
    sums = np.asarray(sums, dtype=np.float64)
    zc = np.asarray(zero_counts, dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        est = g / sums
        use_linear = (zc != 0) & (est < (5.0 * nregs / 2.0))
        out = est.copy()
        large = ~use_linear & ~(est <= cutoff)
        if large.any():
            out[large] = neg_two_to_l * libm_log(1.0 - est[large] / two_to_l)
        if use_linear.any():
            out[use_linear] = float(nregs) * libm_log(float(nregs) / zc[use_linear].astype(np.float64))
    return out


def libm_log(x: np.ndarray) -> np.ndarray:
    """C ``log`` of the platform libm element-wise, as PostgreSQL computes it.

    numpy's vectorised log can differ from libm's by one ulp (e.g. for
    log(2048 / 1339)), which would change hll_cardinality's last bit.  The
    arguments here take few distinct values (one per zero-register count), so
    we evaluate ``math.log`` once per distinct value.
    """
    x = np.asarray(x, dtype=np.float64)
    uniq, inv = np.unique(x, return_inverse=True)
    vals = np.array(
        [math.log(v) if v > 0 else (-math.inf if v == 0 else math.nan) for v in uniq.tolist()], dtype=np.float64
    )
    return vals[inv].reshape(x.shape)


def registers_estimate(p: Params, regs: np.ndarray) -> float:
    """Estimate for one register vector (sequential sum like the C loop)."""
    terms = POW2_NEG[np.asarray(regs, dtype=np.intp)]
    s = float(np.cumsum(terms)[-1])
    zc = int(np.count_nonzero(regs == 0))
    return float(estimate_from_sums(p, np.array([s]), np.array([zc]))[0])


def cardinality(x: object) -> float | None:
    """``hll_cardinality``: exact count for EXPLICIT, estimator for SPARSE/FULL.

    Returns None for UNDEFINED (PostgreSQL returns NULL).
    """
    h = x if isinstance(x, HLL) else decode(x)
    t = h.storage_type
    if t == UNDEFINED:
        return None
    if t == EMPTY:
        return 0.0
    if t == EXPLICIT:
        return float(len(h.values))
    return registers_estimate(h.params, h.registers)


# ---------------------------------------------------------------- multiset state

_COMPRESSED = 5  # in-memory state: registers, packed later as SPARSE or FULL


def rho_and_index(hashes: np.ndarray, log2m: int, regwidth: int) -> tuple[np.ndarray, np.ndarray]:
    """hll.c ``compressed_add``: register index = low log2m bits; value = 1 + ctz(rest), capped.

    Returns (index int64, value uint8) for int64/uint64 hashes (vectorised).
    """
    u = np.asarray(hashes).view(np.uint64) if np.asarray(hashes).dtype == np.int64 else np.asarray(hashes, dtype=np.uint64)
    idx = (u & np.uint64((1 << log2m) - 1)).astype(np.int64)
    rest = u >> np.uint64(log2m)
    # 1 + trailing zeros = popcount(rest ^ (rest - 1)); rest == 0 gives 64 -> 0
    rho = np.bitwise_count(rest ^ (rest - np.uint64(1)))
    rho[rest == 0] = 0
    cap = (1 << regwidth) - 1
    return idx, np.minimum(rho, cap).astype(np.uint8)


class _State:
    """The transition state of hll_union_agg / hll_add_agg (a multiset_t)."""

    __slots__ = ("p", "kind", "values", "regs")

    def __init__(self, h: HLL):
        self.p = h.params
        t = h.storage_type
        if t in (SPARSE, FULL):
            self.kind = _COMPRESSED
            self.regs = h.registers.copy()
            self.values = None
        else:
            self.kind = t
            self.values = h.values.copy() if t == EXPLICIT else None
            self.regs = None

    def to_compressed(self) -> None:
        regs = np.zeros(self.p.nregs, dtype=np.uint8)
        if self.kind == EXPLICIT and len(self.values):
            self._add_hashes(regs, self.values)
        self.kind, self.values, self.regs = _COMPRESSED, None, regs

    def _add_hashes(self, regs: np.ndarray, hashes: np.ndarray) -> None:
        idx, rho = rho_and_index(np.asarray(hashes, dtype=np.int64), self.p.log2m, self.p.regwidth)
        np.maximum.at(regs, idx, rho)

    def union(self, h: HLL) -> None:
        """hll.c ``multiset_union`` (metadata already checked)."""
        tb = h.storage_type
        if self.kind == UNDEFINED or tb == UNDEFINED:
            self.kind, self.values, self.regs = UNDEFINED, None, None
            return
        if tb == EMPTY:
            return
        if self.kind == EMPTY:
            other = _State(h)
            self.kind, self.values, self.regs = other.kind, other.values, other.regs
            return
        if self.kind == EXPLICIT:
            if tb == EXPLICIT:
                merged = np.union1d(self.values, h.values)
                if len(merged) > len(self.values) and len(merged) > self.p.effective_expthresh:
                    self.values = merged
                    self.to_compressed()
                else:
                    self.values = merged
                return
            self.to_compressed()
        # self is compressed
        if tb == EXPLICIT:
            if len(h.values):
                self._add_hashes(self.regs, h.values)
        else:
            np.maximum(self.regs, h.registers, out=self.regs)

    def add(self, element: int) -> None:
        """hll.c ``multiset_add``."""
        expval = self.p.expthresh if self.p.expthresh != -1 else self.p.effective_expthresh
        if expval > 16383:
            raise HLLError(f"explicit threshold {expval} exceeds maximum buffer capacity 16383")
        el = np.array([element], dtype=np.int64)
        if self.kind == EMPTY:
            if expval == 0:
                self.kind, self.values = EXPLICIT, np.zeros(0, dtype=np.int64)
                self.to_compressed()
                self._add_hashes(self.regs, el)
            else:
                self.kind, self.values = EXPLICIT, el
        elif self.kind == EXPLICIT:
            pos = int(np.searchsorted(self.values, element))
            if pos < len(self.values) and int(self.values[pos]) == element:
                return
            if len(self.values) >= expval:
                self.to_compressed()
                self._add_hashes(self.regs, el)
            else:
                self.values = np.insert(self.values, pos, element)
        elif self.kind == _COMPRESSED:
            self._add_hashes(self.regs, el)

    def pack(self, max_sparse: int = -1) -> bytes:
        p = self.p
        if self.kind in (UNDEFINED, EMPTY):
            return p.header(self.kind)
        if self.kind == EXPLICIT:
            return p.header(EXPLICIT) + self.values.astype(">i8").tobytes()
        nfilled = int(np.count_nonzero(self.regs))
        return encode_compressed(p, self.regs, choose_compressed_type(p, nfilled, max_sparse))


def check_metadata(a: Params, b: Params, where: str = "") -> None:
    """hll.c ``check_metadata``: all four parameters must agree for a union."""
    if a != b:
        diffs = [
            f"{name} {getattr(b, name)} vs {getattr(a, name)}"
            for name in ("log2m", "regwidth", "expthresh", "sparseon")
            if getattr(a, name) != getattr(b, name)
        ]
        raise HLLError(f"cannot union hlls with different parameters{where}: " + ", ".join(diffs))


def union(hlls: Iterable[object], *, max_sparse: int = -1) -> bytes | None:
    """``hll_union_agg`` over ``hlls`` (None entries are skipped like NULLs).

    Returns the serialised union, byte-identical to PostgreSQL, or None when
    there are no non-None inputs (hll_union_agg over zero rows is NULL).
    ``max_sparse`` mirrors ``hll_set_max_sparse`` (default -1 = auto).
    """
    state: _State | None = None
    for i, x in enumerate(hlls):
        if x is None:
            continue
        h = x if isinstance(x, HLL) else decode(x)
        if state is None:
            state = _State(HLL(h.params, EMPTY))
        else:
            check_metadata(state.p, h.params, f" (input #{i})")
        state.union(h)
    return None if state is None else state.pack(max_sparse)


def add(x: object, hashed: int, *, max_sparse: int = -1) -> bytes:
    """``hll_add(x, hashed::hll_hashval)``: add one 64-bit hash value."""
    h = x if isinstance(x, HLL) else decode(x)
    hashed = int(hashed)
    if not -(1 << 63) <= hashed < (1 << 63):
        if 0 <= hashed < (1 << 64):
            hashed -= 1 << 64
        else:
            raise HLLError(f"hash value {hashed} does not fit in 64 bits")
    st = _State(h)
    st.add(hashed)
    return st.pack(max_sparse)


def empty(log2m: int = 11, regwidth: int = 5, expthresh: int = -1, sparseon: int = 1) -> bytes:
    """``hll_empty(log2m, regwidth, expthresh, sparseon)`` with PostgreSQL's defaults."""
    return check_params(log2m, regwidth, expthresh, sparseon).header(EMPTY)


def describe(x: object) -> str:
    """``hll_print``: the same text PostgreSQL prints."""
    h = x if isinstance(x, HLL) else decode(x)
    p = h.params
    expbuf = f"-1({p.effective_expthresh})" if p.expthresh == -1 else str(p.expthresh)
    tail = f"nregs={p.nregs}, nbits={p.regwidth}, expthresh={expbuf}, sparseon={p.sparseon}"
    t = h.storage_type
    if t == EMPTY:
        return "EMPTY, " + tail
    if t == UNDEFINED:
        return "UNDEFINED " + tail
    if t == EXPLICIT:
        out = [f"EXPLICIT, {len(h.values)} elements, {tail}:"]
        out += [f"\n{i}: {int(v):20d} " for i, v in enumerate(h.values)]
        return "".join(out)
    regs = h.registers
    out = [f"COMPRESSED, {int(np.count_nonzero(regs))} filled {tail}:"]
    for r in range(p.nregs // 32):
        row = regs[r * 32 : (r + 1) * 32]
        out.append(f"\n{r * 32:4d}: " + "".join(f"{int(v):2d} " for v in row))
    return "".join(out)
