"""Storage format of postgresql-hll values (schema version 1): parse, validate, serialise.

This module owns the byte layout: the 3-byte header, the five storage types
(UNDEFINED, EMPTY, EXPLICIT, SPARSE, FULL), bit packing of registers, the
``\\x`` hex text form, parameter validation and the error class.  It does no
set algebra (see ``_ops``) and no vectorised batch work (see ``_inspect``, ``_vector``).

Header (big-endian bit fields, as in ``pack_header`` of hll.c)::

    byte 0: version (4 bits, must be 1) | storage type (4 bits)
    byte 1: (regwidth - 1) (3 bits)     | log2m (5 bits)
    byte 2: reserved (1 bit, 0) | sparseon (1 bit) | expthresh code (6 bits)

expthresh code: 0 -> 0, 63 -> -1 (auto), k in 1..62 -> 2**(k-1).

Where postgresql-hll 2.16 (the installed version) is laxer than necessary we
reject values that PostgreSQL's own functions can never produce, so garbage
never yields a number: regwidth 8 in the header, a set reserved bit,
non-zero padding bits, register values above ``min(2**regwidth - 1,
64 - log2m)``, SPARSE chunks that are zero or not strictly ascending by
register index, and EXPLICIT lists longer than the effective explicit
threshold.  Every value produced by hll_empty/hll_add/hll_union/the
aggregates decodes, and re-encodes to identical bytes.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "UNDEFINED",
    "EMPTY",
    "EXPLICIT",
    "SPARSE",
    "FULL",
    "TYPE_NAMES",
    "HLLError",
    "HLL",
    "Params",
    "MSE_NELEM_MAX",
    "LOG2M_MAX",
    "as_bytes",
    "to_hex",
    "decode",
    "encode",
    "check_params",
]

UNDEFINED = 0
EMPTY = 1
EXPLICIT = 2
SPARSE = 3
FULL = 4  # hll.c calls it MST_COMPRESSED
TYPE_NAMES = {UNDEFINED: "UNDEFINED", EMPTY: "EMPTY", EXPLICIT: "EXPLICIT", SPARSE: "SPARSE", FULL: "FULL"}

# hll.c sizes its in-memory multiset with MS_MAXDATA = 128 KiB: at most
# (131072 - 8) / 8 explicit elements and 131072 registers (log2m <= 17).
MSE_NELEM_MAX = 16383
LOG2M_MAX = 17


class HLLError(ValueError):
    """Malformed hll value, bad parameters, or incompatible hlls."""


@dataclass(frozen=True)
class Params:
    """The four hll parameters (the ``hll(log2m, regwidth, expthresh, sparseon)`` typmod)."""

    log2m: int = 11
    regwidth: int = 5
    expthresh: int = -1
    sparseon: int = 1

    @property
    def nregs(self) -> int:
        return 1 << self.log2m

    @property
    def effective_expthresh(self) -> int:
        """Explicit threshold actually used (hll.c ``expthresh_value``; -1 = auto)."""
        if self.expthresh == -1:
            return min(((self.regwidth * self.nregs + 7) // 8) // 8, MSE_NELEM_MAX)
        return min(self.expthresh, MSE_NELEM_MAX)

    @property
    def max_register(self) -> int:
        """Largest register value hll_add can produce: min(2**regwidth - 1, 64 - log2m)."""
        return min((1 << self.regwidth) - 1, 64 - self.log2m)

    @property
    def expthresh_code(self) -> int:
        if self.expthresh == -1:
            return 63
        if self.expthresh == 0:
            return 0
        return self.expthresh.bit_length()

    def header(self, stype: int) -> bytes:
        return bytes(
            (
                0x10 | stype,
                ((self.regwidth - 1) << 5) | self.log2m,
                (self.sparseon << 6) | self.expthresh_code,
            )
        )

    @property
    def code(self) -> int:
        """16-bit code = header bytes 1 and 2 (see ``params_of_code``)."""
        h = self.header(0)
        return (h[1] << 8) | h[2]


def check_params(log2m: int, regwidth: int, expthresh: int, sparseon: int) -> Params:
    """Validate parameters like hll.c ``check_modifiers`` (what hll_empty accepts).

    regwidth 0 passes PostgreSQL's check but cannot be represented in the
    header (it would read back as 8), so it is rejected here.
    """
    for name, v in (("log2m", log2m), ("regwidth", regwidth), ("expthresh", expthresh), ("sparseon", sparseon)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise HLLError(f"{name} must be an integer, got {v!r}")
    log2m, regwidth, expthresh, sparseon = int(log2m), int(regwidth), int(expthresh), int(sparseon)
    if not 0 <= log2m <= LOG2M_MAX:
        raise HLLError(f"log2m {log2m} out of range: must be between 0 and {LOG2M_MAX}")
    if not 1 <= regwidth <= 7:
        raise HLLError(f"regwidth {regwidth} out of range: must be between 1 and 7")
    if not -1 <= expthresh <= MSE_NELEM_MAX:
        raise HLLError(f"expthresh {expthresh} out of range: must be between -1 and {MSE_NELEM_MAX}")
    if expthresh > 0 and expthresh & (expthresh - 1):
        raise HLLError(f"expthresh {expthresh} must be -1, 0 or a power of 2")
    if sparseon not in (0, 1):
        raise HLLError(f"sparseon {sparseon} must be 0 or 1")
    return Params(log2m, regwidth, expthresh, sparseon)


def params_from_header(b1: int, b2: int, registers: bool = True) -> Params:
    """Parameters from header bytes 1 and 2, read as postgresql-hll 2.16 reads them.

    Its ``unpack_header`` ignores the reserved top bit of byte 2 and checks no
    parameter: only values with registers (SPARSE, FULL) must fit in memory
    (``log2m <= 17``); EMPTY, UNDEFINED and EXPLICIT values are accepted with
    any ``log2m`` and ``regwidth`` up to 8 (``hll_empty(11,0,-1,0)`` prints as
    ``\\x11eb3f``, regwidth 8).  ``registers``: check what a SPARSE/FULL value
    needs (the engine keeps registers of at most 7 bits, like every value
    ``hll_add`` can make).
    """
    regwidth = (b1 >> 5) + 1
    log2m = b1 & 0x1F
    code = b2 & 0x3F
    if registers and regwidth > 7:
        raise HLLError(f"regwidth {regwidth} out of range: must be between 1 and 7")
    if registers and log2m > LOG2M_MAX:
        raise HLLError(f"log2m {log2m} out of range: must be between 0 and {LOG2M_MAX}")
    expthresh = -1 if code == 63 else (0 if code == 0 else 1 << (code - 1))
    return Params(log2m, regwidth, expthresh, (b2 >> 6) & 1)


@dataclass(frozen=True, eq=False)
class HLL:
    """A decoded hll.

    ``values``: EXPLICIT elements (int64, ascending signed, distinct), else None.
    ``registers``: SPARSE/FULL registers (uint8, length 2**log2m), else None.
    ``storage_type``: one of UNDEFINED, EMPTY, EXPLICIT, SPARSE, FULL.
    """

    params: Params
    storage_type: int
    values: np.ndarray | None = field(default=None)
    registers: np.ndarray | None = field(default=None)

    @property
    def type_name(self) -> str:
        return TYPE_NAMES[self.storage_type]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HLL):
            return NotImplemented
        return encode(self) == encode(other)

    def __hash__(self) -> int:
        return hash(encode(self))


_HEX_RE = re.compile(r"\s*\\[xX]([0-9A-Fa-f]*)\s*\Z")


def as_bytes(x: object) -> bytes:
    """Accept bytes/bytearray/memoryview or PostgreSQL bytea hex text ``\\x..``."""
    if isinstance(x, bytes):
        return x
    if isinstance(x, (bytearray, memoryview)):
        return bytes(x)
    if isinstance(x, HLL):
        return encode(x)
    if isinstance(x, str):
        m = _HEX_RE.match(x)
        if m is None:
            shown = x if len(x) <= 40 else x[:37] + "..."
            raise HLLError(f"not a bytea hex text (expected '\\x' followed by hex digits): {shown!r}")
        digits = m.group(1)
        if len(digits) % 2:
            raise HLLError(f"odd number of hex digits ({len(digits)}) in bytea hex text")
        try:
            return binascii.unhexlify(digits)
        except (binascii.Error, ValueError) as exc:  # pragma: no cover - regex guarantees hex
            raise HLLError(f"invalid hex text: {exc}") from None
    raise HLLError(f"expected bytes or '\\x' hex text for an hll, got {type(x).__name__}")


def to_hex(b: bytes | bytearray | memoryview) -> str:
    """PostgreSQL bytea hex text: ``'\\x'`` + lower-case hex."""
    return "\\x" + bytes(b).hex()


# ---------------------------------------------------------------- bit packing


def unpack_fixed(payload: np.ndarray, width: int, count: int) -> np.ndarray:
    """Read ``count`` big-endian ``width``-bit fields from a byte array (MSB first)."""
    if count == 0:
        return np.zeros(0, dtype=np.uint32)
    bits = np.unpackbits(payload)[: width * count].reshape(count, width).astype(np.uint32)
    weights = (1 << np.arange(width - 1, -1, -1, dtype=np.uint32)).astype(np.uint32)
    return bits @ weights


def pack_fixed(fields: np.ndarray, width: int) -> bytes:
    """Inverse of unpack_fixed: MSB-first fields, zero padded to whole bytes."""
    if len(fields) == 0:
        return b""
    f = np.asarray(fields, dtype=">u4").view(np.uint8).reshape(-1, 4)
    bits = np.unpackbits(f, axis=1)[:, 32 - width :]
    return np.packbits(bits.ravel()).tobytes()


def _check_padding(payload: np.ndarray, used_bits: int, what: str) -> None:
    pad = len(payload) * 8 - used_bits
    if pad and int(payload[-1]) & ((1 << pad) - 1):
        raise HLLError(f"nonzero padding bits in {what} hll")


def decode(x: object) -> HLL:
    """Decode one hll (bytes or ``\\x`` hex) into an :class:`HLL`, validating everything."""
    b = as_bytes(x)
    n = len(b)
    if n < 3:
        raise HLLError(f"truncated hll: {n} bytes, the header alone needs 3")
    vers, stype = b[0] >> 4, b[0] & 0xF
    if vers != 1:
        raise HLLError(f"unknown hll schema version {vers}")
    if stype > 4:
        raise HLLError(f"unknown hll type {stype}")
    p = params_from_header(b[1], b[2], registers=stype in (SPARSE, FULL))
    if stype in (UNDEFINED, EMPTY):
        if n != 3:
            raise HLLError(f"{TYPE_NAMES[stype]} hll must be exactly 3 bytes, got {n}")
        return HLL(p, stype)
    if stype == EXPLICIT:
        if (n - 3) % 8:
            raise HLLError(f"truncated EXPLICIT value: {n} bytes (3 + a multiple of 8 expected)")
        nelem = (n - 3) // 8
        if nelem > MSE_NELEM_MAX:  # hll.c: "explicit multiset too large"; no threshold check
            raise HLLError(f"EXPLICIT hll with {nelem} values is too large (at most {MSE_NELEM_MAX})")
        vals = np.frombuffer(b, dtype=">i8", offset=3).astype(np.int64)
        if nelem > 1 and not bool(np.all(vals[1:] > vals[:-1])):
            raise HLLError("EXPLICIT values are not strictly ascending (duplicate or unsorted elements)")
        return HLL(p, EXPLICIT, values=vals)
    payload = np.frombuffer(b, dtype=np.uint8, offset=3)
    w, m = p.regwidth, p.log2m
    if stype == FULL:
        need = (w * p.nregs + 7) // 8
        if n - 3 != need:
            raise HLLError(f"wrong FULL size: {n} bytes, expected {3 + need} for log2m {m} regwidth {w}")
        _check_padding(payload, w * p.nregs, "FULL")
        regs = unpack_fixed(payload, w, p.nregs).astype(np.uint8)
        _check_registers(regs, p)
        return HLL(p, FULL, registers=regs)
    # SPARSE
    chunk = m + w
    nbits = (n - 3) * 8
    nfilled = nbits // chunk
    if nbits - nfilled * chunk >= 8:
        raise HLLError(f"wrong SPARSE size: {n} bytes do not hold whole {chunk}-bit entries")
    _check_padding(payload, nfilled * chunk, "SPARSE")
    fields = unpack_fixed(payload, chunk, nfilled)
    idx = (fields >> w).astype(np.int64)
    val = (fields & ((1 << w) - 1)).astype(np.uint8)
    if nfilled and not bool(np.all(val > 0)):
        raise HLLError("SPARSE entry with register value 0")
    if nfilled > 1 and not bool(np.all(idx[1:] > idx[:-1])):
        raise HLLError("SPARSE register indices not strictly ascending")
    regs = np.zeros(p.nregs, dtype=np.uint8)
    regs[idx] = val
    _check_registers(regs, p)
    return HLL(p, SPARSE, registers=regs)


def _check_registers(regs: np.ndarray, p: Params) -> None:
    if len(regs):
        mx = int(regs.max())
        if mx > p.max_register:
            raise HLLError(
                f"register value {mx} out of range for regwidth {p.regwidth} and log2m {p.log2m} "
                f"(max {p.max_register})"
            )


def encode_compressed(p: Params, regs: np.ndarray, stype: int) -> bytes:
    """Serialise registers as SPARSE or FULL."""
    if stype == FULL:
        return p.header(FULL) + pack_fixed(regs, p.regwidth)
    idx = np.flatnonzero(regs).astype(np.uint32)
    fields = (idx << np.uint32(p.regwidth)) | regs[idx].astype(np.uint32)
    return p.header(SPARSE) + pack_fixed(fields, p.log2m + p.regwidth)


def choose_compressed_type(p: Params, nfilled: int, max_sparse: int = -1) -> int:
    """hll.c ``multiset_pack``: SPARSE when enabled and smaller (or under hll_set_max_sparse)."""
    if p.sparseon and (
        (max_sparse != -1 and nfilled <= max_sparse)
        or (max_sparse == -1 and nfilled * (p.log2m + p.regwidth) < p.nregs * p.regwidth)
    ):
        return SPARSE
    return FULL


def encode(h: HLL) -> bytes:
    """Serialise an :class:`HLL` in its own storage type (inverse of :func:`decode`)."""
    p, t = h.params, h.storage_type
    if t in (UNDEFINED, EMPTY):
        return p.header(t)
    if t == EXPLICIT:
        vals = np.asarray(h.values if h.values is not None else [], dtype=np.int64)
        return p.header(EXPLICIT) + vals.astype(">i8").tobytes()
    if t in (SPARSE, FULL):
        if h.registers is None or len(h.registers) != p.nregs:
            raise HLLError(f"{TYPE_NAMES[t]} hll needs {p.nregs} registers")
        return encode_compressed(p, np.asarray(h.registers, dtype=np.uint8), t)
    raise HLLError(f"unknown hll type {t}")
