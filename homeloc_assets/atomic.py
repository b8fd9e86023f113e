"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every export and every partition file goes through here: write to a temporary
file in the same folder, flush and fsync it, then ``os.replace`` it into place.
Files a step stages for the IO manager to move into place are named and, when
their writer died, removed here too (:func:`staged_path`, :func:`remove_dead_staged`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success move it onto ``target``.

    On an exception the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def remove_temporaries(target: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files that ``atomic_path(target)`` left behind in a killed process.

    Call only while no live writer of ``target`` can exist (e.g. under its lock).
    """
    target = Path(target)
    gone = []
    for p in target.parent.glob(f".{target.name}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            gone.append(p)
    return gone


#: seconds after which a staged file of another machine (or of an unknown writer) is left over
STAGED_TIMEOUT = 3600.0


def _node_tag() -> str:
    """8 hex digits naming this machine and pid namespace (``lease.node_id``)."""
    from homeloc_assets.lease import node_id

    return hashlib.sha1(node_id().encode()).hexdigest()[:8]


def staged_path(folder: str | os.PathLike[str], stem: str) -> Path:
    """A new name ``<folder>/.<stem>.<node>-<pid>-<ns>.staged`` for a file an IO manager
    moves into place.

    A step writes (or hard-links) the file there and hands its path to the IO
    manager, which renames it onto the asset's file in the same process. Who
    staged it (machine and pid) is in the name, for :func:`remove_dead_staged`.
    """
    return Path(folder) / f".{stem}.{_node_tag()}-{os.getpid()}-{time.time_ns()}.staged"


def remove_dead_staged(folder: str | os.PathLike[str], stem: str,
                       timeout: float = STAGED_TIMEOUT) -> list[Path]:
    """Delete the staged files ``.<stem>.*.staged`` (:func:`staged_path`) of writers that are gone.

    One rule for every staged file (the classification's and the landscape's):
    a file staged on this machine is left over (``kill -9`` between staging and
    the move) exactly when its process no longer runs; one staged elsewhere (a
    pid of another machine or container says nothing here), or without a pid in
    its name, when it has not changed for ``timeout`` seconds. The change time
    (ctime) is used, not the mtime: a staged hard link carries the mtime of the
    file it links (a batch worker's landscape table, maybe hours old), while
    linking sets the ctime. Files of a live process (another run on the same
    asset) are kept.
    """
    from homeloc_assets.lease import process_alive

    here, now, gone = _node_tag(), time.time(), []
    for p in Path(folder).glob(f".{stem}.*.staged"):
        node, _, rest = p.name[len(stem) + 2:].partition("-")
        pid = rest.partition("-")[0]
        try:
            if node == here and pid.isdigit():
                dead = not process_alive(int(pid), None)
            else:
                dead = now - p.stat().st_ctime > timeout
            if dead:
                p.unlink()
                gone.append(p)
        except FileNotFoundError:
            pass  # moved into place or removed by another run meanwhile
    return gone


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``target`` atomically."""
    write_bytes_atomic(target, text.encode("utf-8"))
