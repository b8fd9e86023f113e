"""Published as one set: every output of one classification switches at once.

Layout of an output folder ``<out>``::

    <out>/generations/<generation>/   every file of one classification (exports,
                                      figures/, landscape, sensitivity) and
                                      MANIFEST.json (each file's size and sha256)
    <out>/current -> generations/<generation>      the published set
    <out>/<name>  -> current/<name>                 one link per published name

The steps of a run write into their own, not yet published, generation
folder. :func:`publish` then writes the manifest and switches ``current`` with
one ``rename`` of a symbolic link — atomic on POSIX file systems, NFS
included. So a reader (and a ``kill -9`` at any moment) sees the previous
complete set or the new complete set, never a mix; a step that fails before
the switch publishes nothing new. Readers that open several files and must
not straddle a switch resolve ``current`` once (``os.path.realpath``) and read
from there; ``MANIFEST.json`` names every file of the set with its checksum.

Old generations are removed when a newer one is published; the previous one is
kept (a reader may still be reading it). No Dagster.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from homeloc_assets.atomic import write_text_atomic
from homeloc_assets.layout import CURRENT, GENERATIONS_DIR, MANIFEST, OutputLayout, is_generation


class IncompleteSetError(Exception):
    """A generation lacks a file that every published set must have (``missing``)."""

    def __init__(self, message: str, missing: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.missing = missing


def new_generation_id(salt: str = "") -> str:
    """``YYYYmmddTHHMMSSffffff-<8 hex>``: sorts by creation time, unique per classification."""
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now % 1 * 1e6):06d}"
    digest = hashlib.sha1(f"{now!r}:{os.getpid()}:{salt}".encode()).hexdigest()[:8]
    return f"{stamp}-{digest}"


def generation_dir(out_dir: str | Path, generation: str) -> Path:
    """The folder of ``generation`` under ``out_dir`` (not created)."""
    return OutputLayout(out_dir).generation(generation)


def current_generation(out_dir: str | Path) -> str | None:
    """The generation ``<out>/current`` points to, or None before the first publication."""
    link = OutputLayout(out_dir).current
    try:
        target = os.readlink(link)
    except (FileNotFoundError, OSError):
        return None
    return Path(target).name


def _files(folder: Path) -> list[Path]:
    """Every regular file under ``folder`` except the manifest and writers' temporaries."""
    out = []
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink() and p.name != MANIFEST and not (
                p.name.startswith(".") and p.suffix in (".tmp", ".staged", ".part")):
            out.append(p)
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def manifest_of(folder: str | Path) -> dict:
    """``{"files": {relative path: {"bytes": n, "sha256": hex}}}`` of a generation folder.

    Deterministic: the same files give the same manifest, whatever the generation's name.
    """
    folder = Path(folder)
    return {"files": {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size,
                                                         "sha256": _sha256(p)}
                      for p in _files(folder)}}


def verify(out_dir: str | Path) -> list[str]:
    """Differences between the published set and its manifest (empty: the set is intact)."""
    folder = OutputLayout(out_dir).current
    path = folder / MANIFEST
    if not path.is_file():
        return [f"{path}: missing"]
    want = json.loads(path.read_text())["files"]
    have = manifest_of(folder)["files"]
    problems = [f"{name}: missing" for name in sorted(set(want) - set(have))]
    problems += [f"{name}: not in the manifest" for name in sorted(set(have) - set(want))]
    problems += [f"{name}: changed" for name in sorted(set(want) & set(have))
                 if want[name] != have[name]]
    return problems


def _link(target: str, at: Path) -> None:
    """Make ``at`` a symbolic link to ``target`` in one rename (replacing a file or link)."""
    if at.is_symlink() and os.readlink(at) == target:
        return
    tmp = at.with_name(f".{at.name}.{os.getpid()}.{time.time_ns()}.link.tmp")
    os.symlink(target, tmp)
    try:
        if at.is_dir() and not at.is_symlink():
            # a folder of the layout before generations (e.g. figures/): move it aside first
            aside = at.with_name(f".{at.name}.{time.time_ns()}.old")
            os.rename(at, aside)
            shutil.rmtree(aside, ignore_errors=True)
        os.replace(tmp, at)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(out_dir: str | Path, generation: str, required: tuple[str, ...] = ()) -> dict:
    """Make ``generation`` the published set of ``out_dir``; returns its manifest.

    ``required`` names files the set must contain (else :class:`IncompleteSetError`
    and nothing changes). Call under the folder's exports lock.
    """
    out = Path(out_dir)
    folder = generation_dir(out, generation)
    if not folder.is_dir():
        raise IncompleteSetError(f"{folder}: no such generation")
    missing = [name for name in required if not (folder / name).is_file()]
    if missing:
        raise IncompleteSetError(f"{folder}: missing {', '.join(missing)}; nothing was published",
                                 tuple(missing))
    manifest = manifest_of(folder)
    write_text_atomic(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    _fsync_dir(folder)
    previous = current_generation(out)
    names = sorted({p.name for p in folder.iterdir() if not p.name.startswith(".")})
    # links for names that are new in this set first: they dangle until the switch
    for name in names:
        _link(f"{CURRENT}/{name}", out / name)
    _link(f"{GENERATIONS_DIR}/{generation}", OutputLayout(out).current)  # the switch
    _fsync_dir(out)
    for p in out.iterdir():  # names the new set no longer has
        if p.is_symlink() and os.readlink(p).startswith(f"{CURRENT}/") and not p.exists():
            p.unlink(missing_ok=True)
    _remove_old_generations(out, keep={generation, previous})
    return manifest


def _remove_old_generations(out: Path, keep: set[str | None]) -> None:
    """Delete generations older than the kept ones (never a newer one: it may be in progress)."""
    root = OutputLayout(out).generations
    kept = sorted(k for k in keep if k)
    if not kept or not root.is_dir():
        return
    oldest_kept = kept[0]
    for p in root.iterdir():
        if p.name not in keep and is_generation(p.name) and p.name < oldest_kept:
            shutil.rmtree(p, ignore_errors=True)
