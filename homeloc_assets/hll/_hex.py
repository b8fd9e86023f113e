"""Hex text of whole columns: the one decoder (and encoder) of bytea hex in homeloc.

:func:`unhex_many` decodes a column of PostgreSQL bytea hex texts
(``\\x…``) at once; the input reader and the engine both use it.
:func:`hex_ascii` is the inverse for uint8 buffers (``homeloc synth`` writes
its hll column and user ids with it).  A single value is decoded by
``_format.as_bytes``.

Speed: the rows of clean shape are decoded straight from the text buffer by the
compiled kernel (``_kernel.unhex_rows``) where it was built; else (the reference) their
digits are one contiguous Arrow buffer (one ``binary_slice`` that drops the ``\\x``
prefixes) decoded by one ``binascii.unhexlify`` call (C, ~2 GB/s). numpy only looks at
the first and last byte of each row.  Rows with whitespace, no prefix, an odd number of
digits or a non-hex digit are the slow exceptions: whitespace costs one
trimming pass over the column, bad rows are found with a byte lookup table
and left out.
"""

from __future__ import annotations

import binascii

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from ._format import HLLError
from ._native import KERNEL

__all__ = ["HEX_PAIRS", "HEX_VALUE", "arrow_buffers", "hex_ascii", "not_null_mask", "unhex_many"]

#: HEX_VALUE[c] = the value of ASCII hex digit c (either case), 255 for any other byte.
HEX_VALUE = np.full(256, 255, dtype=np.uint8)
HEX_VALUE[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
HEX_VALUE[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
HEX_VALUE[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)

#: HEX_PAIRS[b] = the two lower-case ASCII hex digits of byte b, shape (256, 2) uint8.
HEX_PAIRS = np.frombuffer(b"0123456789abcdef", np.uint8)[
    np.stack([np.arange(256) >> 4, np.arange(256) & 15], axis=1)
]

_BACKSLASH, _LOWER_X = ord("\\"), ord("x")
#: a byte that may end a clean row: a hex digit, or the x of an empty ``\\x``
_CLEAN_LAST = HEX_VALUE != 255
_CLEAN_LAST[[ord("x"), ord("X")]] = True


def hex_ascii(buf: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """ASCII lower-case hex of a uint8 array (twice as long; a (n, k) array gives (n, 2k))."""
    arr = np.asarray(buf, dtype=np.uint8)
    return HEX_PAIRS[arr].reshape(*arr.shape[:-1], -1) if arr.ndim > 1 else HEX_PAIRS[arr].reshape(-1)


def arrow_buffers(
    arr: pa.Array,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """(data, offsets [n + 1] from 0, not-null mask) of a binary/string Arrow array, zero-copy."""
    large = pa.types.is_large_binary(arr.type) or pa.types.is_large_string(arr.type)
    if not (large or pa.types.is_binary(arr.type) or pa.types.is_string(arr.type)):
        raise HLLError(f"expected a binary or string Arrow array, got {arr.type}")
    n = len(arr)
    _, offset_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offset_buf, dtype=np.int64 if large else np.int32)
    offsets = offsets[arr.offset : arr.offset + n + 1].astype(np.int64)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    if n:
        data = data[offsets[0] : offsets[-1]]
        offsets -= offsets[0]
    return data, offsets, not_null_mask(arr)


def not_null_mask(arr: pa.Array) -> npt.NDArray[np.bool_]:
    """True where ``arr`` is not null, from its validity bitmap (no per-value Arrow boolean)."""
    n = len(arr)
    if not arr.null_count:
        return np.ones(n, dtype=bool)
    bits = np.unpackbits(np.frombuffer(arr.buffers()[0], np.uint8), bitorder="little")
    return bits[arr.offset : arr.offset + n].astype(bool)


def _as_large_string(values: object) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if not isinstance(values, pa.Array):
        values = pa.array(list(values), type=pa.large_string())
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        raise HLLError(f"unhex_many expects a string array, got {values.type}")
    return values.cast(pa.large_string())


def _needs_trim(data: npt.NDArray[np.uint8], offsets: npt.NDArray[np.int64]) -> bool:
    """True unless every non-empty row starts with a backslash and ends like a clean row."""
    nonempty = np.flatnonzero(offsets[1:] > offsets[:-1])
    if not len(nonempty):
        return False
    first = data[offsets[nonempty]]
    last = data[offsets[nonempty + 1] - 1]
    return not (np.all(first == _BACKSLASH) and np.all(_CLEAN_LAST[last]))


def _decode_clean(rows: pa.Array) -> tuple[bytes, npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Decode rows that are all ``\\x`` + an even number of characters (no nulls).

    Returns (decoded bytes of the good rows, their offsets, good mask);
    a row is bad when one of its characters is not a hex digit.
    """
    if not len(rows):
        return b"", np.zeros(1, np.int64), np.zeros(0, dtype=bool)
    if KERNEL is not None:
        decoded = _decode_compiled(rows)
        if decoded is not None:
            return decoded
    return _decode_clean_numpy(rows)


def _decode_compiled(rows: pa.Array) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64],
                                              npt.NDArray[np.bool_]] | None:
    """:func:`_decode_clean` straight from the text buffer (``_kernel.unhex_rows``: no copy
    of the digits first); None when a character is not a hex digit (the numpy path then
    finds the bad rows)."""
    data, offsets, _ = arrow_buffers(rows)
    n = len(rows)
    out_offsets = (offsets - 2 * np.arange(n + 1, dtype=np.int64)) // 2
    out = np.empty(int(out_offsets[-1]), np.uint8)
    if KERNEL.unhex_rows(data, offsets, out) != 0:
        return None
    return out, out_offsets, np.ones(n, dtype=bool)


def _decode_clean_numpy(rows: pa.Array) -> tuple[bytes, npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """:func:`_decode_clean` by Arrow and ``binascii`` (the reference of the compiled path)."""
    if not len(rows):
        return b"", np.zeros(1, np.int64), np.zeros(0, dtype=bool)
    _, row_offsets, _ = arrow_buffers(rows)
    longest = int(np.diff(row_offsets).max())
    digits = pc.binary_slice(rows.cast(pa.large_binary()), 2, max(2, longest))
    data, offsets, _ = arrow_buffers(digits)
    try:
        return binascii.unhexlify(data), offsets // 2, np.ones(len(rows), dtype=bool)
    except binascii.Error:
        pass
    bad_at = np.flatnonzero(HEX_VALUE[data] == 255)
    good = np.ones(len(rows), dtype=bool)
    good[np.searchsorted(offsets, bad_at, side="right") - 1] = False
    keep = np.flatnonzero(good)
    decoded, kept_offsets, _ = _decode_clean_numpy(rows.take(pa.array(keep, pa.int64())))
    lengths = np.zeros(len(rows), dtype=np.int64)
    lengths[keep] = np.diff(kept_offsets)
    return decoded, np.concatenate([[0], np.cumsum(lengths)]), good


def unhex_many(values: object) -> tuple[pa.Array, npt.NDArray[np.bool_]]:
    """Decode a column of PostgreSQL bytea hex texts (``\\x..``) at once.

    Surrounding whitespace is stripped.  Rows that are null, lack the
    ``\\x`` prefix (either case), have an odd number of digits or a non-hex
    character get ok=False and a null output.  Returns
    (pyarrow.LargeBinaryArray, ok).
    """
    texts = _as_large_string(values)
    n = len(texts)
    if n == 0:
        return pa.array([], type=pa.large_binary()), np.zeros(0, bool)
    data, offsets, not_null = arrow_buffers(texts)
    if _needs_trim(data, offsets):
        texts = pc.utf8_trim_whitespace(texts)
        data, offsets, not_null = arrow_buffers(texts)
    start, length = offsets[:-1], np.diff(offsets)
    padded = np.concatenate([data, np.zeros(2, np.uint8)])
    ok = (
        not_null
        & (length >= 2)
        & (length % 2 == 0)
        & (padded[start] == _BACKSLASH)
        & ((padded[start + 1] | 0x20) == _LOWER_X)
    )
    if ok.all():
        decoded, out_offsets, ok = _decode_clean(texts)
    else:
        good = np.flatnonzero(ok)
        decoded, good_offsets, good_ok = _decode_clean(texts.take(pa.array(good, pa.int64())))
        ok[good] = good_ok
        lengths = np.zeros(n, dtype=np.int64)
        lengths[good] = np.diff(good_offsets)
        out_offsets = np.concatenate([[0], np.cumsum(lengths)])
    validity = None if ok.all() else pa.py_buffer(np.packbits(ok, bitorder="little").tobytes())
    out = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), n,
        [validity, pa.py_buffer(out_offsets.astype(np.int64).tobytes()), pa.py_buffer(decoded)],
    )
    return out, ok
