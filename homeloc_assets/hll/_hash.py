"""postgresql-hll's hash functions (``hll_hash_*``) on top of the ``mmh3`` package.

hll.c hashes the in-memory bytes of the value (little-endian on x86-64 for
fixed-size types, the raw bytes for varlena types) with MurmurHash3_x64_128
and returns the first 64-bit half as a signed int8 (``hll_hashval``).  The
int4 seed is passed to Murmur as uint32, so a negative seed acts as
``seed + 2**32`` (PostgreSQL also emits a WARNING "negative seed values not
compatible"; we emit a Python ``UserWarning``).
"""

from __future__ import annotations

import struct
import warnings

import mmh3

from ._format import HLLError

__all__ = [
    "hash_bigint",
    "hash_integer",
    "hash_smallint",
    "hash_boolean",
    "hash_text",
    "hash_bytea",
    "hash_any",
]


def _seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise HLLError(f"hash seed must be an int, got {seed!r}")
    if not -(1 << 31) <= seed < (1 << 31):
        raise HLLError(f"hash seed {seed} out of int4 range")
    if seed < 0:
        warnings.warn("negative seed values not compatible", UserWarning, stacklevel=3)
    return seed & 0xFFFFFFFF


def _murmur(key: bytes, seed: int) -> int:
    return mmh3.hash64(key, _seed(seed), True, True)[0]


def _fixed(v: object, fmt: str, lo: int, hi: int, name: str) -> bytes:
    if isinstance(v, bool) or not isinstance(v, int):
        raise HLLError(f"{name} value must be an int, got {v!r}")
    if not lo <= v <= hi:
        raise HLLError(f"{name} value {v} out of range")
    return struct.pack(fmt, v)


def hash_bigint(v: int, seed: int = 0) -> int:
    """``hll_hash_bigint(v, seed)``: Murmur3 of the 8 little-endian bytes of an int8."""
    return _murmur(_fixed(v, "<q", -(1 << 63), (1 << 63) - 1, "bigint"), seed)


def hash_integer(v: int, seed: int = 0) -> int:
    """``hll_hash_integer(v, seed)``: 4 little-endian bytes of an int4."""
    return _murmur(_fixed(v, "<i", -(1 << 31), (1 << 31) - 1, "integer"), seed)


def hash_smallint(v: int, seed: int = 0) -> int:
    """``hll_hash_smallint(v, seed)``: 2 little-endian bytes of an int2."""
    return _murmur(_fixed(v, "<h", -(1 << 15), (1 << 15) - 1, "smallint"), seed)


def hash_boolean(v: bool, seed: int = 0) -> int:
    """``hll_hash_boolean(v, seed)``: one byte, 0 or 1."""
    if not isinstance(v, bool):
        raise HLLError(f"boolean value must be a bool, got {v!r}")
    return _murmur(b"\x01" if v else b"\x00", seed)


def hash_text(v: str, seed: int = 0) -> int:
    """``hll_hash_text(v, seed)``: the UTF-8 bytes (database encoding UTF8 assumed)."""
    if not isinstance(v, str):
        raise HLLError(f"text value must be a str, got {type(v).__name__}")
    return _murmur(v.encode("utf-8"), seed)


def hash_bytea(v: bytes | bytearray | memoryview, seed: int = 0) -> int:
    """``hll_hash_bytea(v, seed)``: the raw bytes."""
    if not isinstance(v, (bytes, bytearray, memoryview)):
        raise HLLError(f"bytea value must be bytes, got {type(v).__name__}")
    return _murmur(bytes(v), seed)


def hash_any(v: object, seed: int = 0) -> int:
    """``hll_hash_any`` for the Python types whose PostgreSQL type is unambiguous.

    bool -> boolean, int -> bigint (PostgreSQL would pick by the argument's SQL
    type: an int4 column hashes 4 bytes, so use hash_integer for those),
    str -> text, bytes -> bytea.
    """
    if isinstance(v, bool):
        return hash_boolean(v, seed)
    if isinstance(v, int):
        return hash_bigint(v, seed)
    if isinstance(v, str):
        return hash_text(v, seed)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return hash_bytea(v, seed)
    raise HLLError(f"hash_any: unsupported type {type(v).__name__}")
