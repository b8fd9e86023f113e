"""The one structural rule of an input over all its batches: each user's rows are together.

Users may come in any order (byte order, a linguistic collation such as a
database's ``ORDER BY user_guid``, numeric ids, concatenated exports of
disjoint users). Each batch checks its own range exactly and records its users
as 64-bit hashes with the byte offset of their first row
(``reader.USERS_SCHEMA``, 24 bytes per user: about 150 MB for 6.3 M users
when all batches are checked at once, one sort). A hash seen in two batches is
confirmed on the input itself (the first field of both lines is read back), so
a hash collision can never fail a good file. No Dagster here.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa

__all__ = ["find_split_user", "check_grouped"]


def _guid_at(path: str | Path, offset: int, guid_column: int | None = None) -> str:
    if guid_column is None:  # found by name in the header, like the reader does
        from homeloc_assets.inputs.plan import read_layout

        guid_column = read_layout(path)[1].guid
    with open(path, "rb") as fh:
        fh.seek(offset)
        line = fh.readline(1 << 20).rstrip(b"\r\n")
    return line.split(b",")[guid_column].strip(b'"').decode("utf-8", errors="replace")


def find_split_user(path: str | Path, users: Iterable[pa.Table],
                    guid_column: int | None = None) -> tuple[str, int, int] | None:
    """``(user_guid, offset_a, offset_b)`` of a user found in two batches of ``path``, or None.

    ``users``: each batch's users table in file order. Offsets are of the
    first row of that user in each batch (a < b).
    """
    tables = [t for t in users if t is not None and t.num_rows]
    if len(tables) < 2:
        return None
    hashes = np.concatenate([t.column("hash").to_numpy() for t in tables])
    h = np.sort(hashes)  # a sort of the values, 2-3x faster than argsort: nearly always no repeat
    if not (h[1:] == h[:-1]).any():
        return None
    offsets = np.concatenate([t.column("offset").to_numpy() for t in tables])
    order = np.argsort(hashes, kind="stable")
    h = hashes[order]
    same = np.flatnonzero(h[1:] == h[:-1])
    for i in same.tolist():  # confirmed on the file: a collision is not an error
        a, b = sorted((int(offsets[order[i]]), int(offsets[order[i + 1]])))
        ga, gb = _guid_at(path, a, guid_column), _guid_at(path, b, guid_column)
        if ga == gb:
            return ga, a, b
    return None


def check_grouped(path: str | Path, users: Iterable[pa.Table],
                  guid_column: int | None = None) -> None:
    """Raise :class:`InputError` naming two lines when a user's rows are not together."""
    hit = find_split_user(path, users, guid_column)
    if hit is not None:
        from homeloc_assets.inputs.reader import split_user_error

        raise split_user_error(path, hit[0], [hit[1], hit[2]])
