"""The watched input folder, without Dagster: which files count, what the sensor remembers,
how batches are cut into runs, and what a quiet tick says.

``homeloc_assets.defs.sensors`` and ``defs.schedules`` wire these into the input sensor and the
nightly heal schedule; tests call them directly.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from homeloc_assets.catalog import batch_key

#: batches per run (sensor ranges, heal ranges, backfill policy)
BATCHES_PER_RUN = 16


def chunk(keys: Sequence[str], size: int = BATCHES_PER_RUN) -> list[list[str]]:
    """``keys`` cut into lists of at most ``size``."""
    return [list(keys[i : i + size]) for i in range(0, len(keys), size)]


def consecutive_ranges(
    wanted: Iterable[str], order: Sequence[str], size: int = BATCHES_PER_RUN
) -> list[list[str]]:
    """The keys of ``wanted`` as runs of consecutive keys of ``order``, each at most ``size``.

    A partition range covers every key between its ends, so a range may only
    span keys that are all wanted.
    """
    wanted = set(wanted)
    out: list[list[str]] = []
    cur: list[str] = []
    for k in order:
        if k in wanted and len(cur) < size:
            cur.append(k)
            continue
        if cur:
            out.append(cur)
        cur = [k] if k in wanted else []
    if cur:
        out.append(cur)
    return out


# ------------------------------------------------------------------------ the folder
@dataclass(frozen=True)
class Candidate:
    """A CSV in the input folder that may be registered."""

    name: str
    path: Path  # resolved (a symlink inside the folder resolves to its target)
    size: int
    mtime_ns: int


def _not_an_input_name(name: str) -> bool:
    low = name.lower()
    return (
        name.startswith((".", "~", "#"))
        or low.endswith((".tmp", ".part", ".partial", ".crdownload", ".swp", "~"))
        or low.endswith(".truth.csv")  # homeloc synth's truth beside its sample: not an input
        or not low.endswith((".csv", ".csv.gz"))
    )


def scan_input_dir(input_dir: str | Path) -> tuple[dict[str, Candidate], list[str]]:
    """The regular ``*.csv`` files directly in ``input_dir`` and the names that were ignored.

    Hidden and temporary names are skipped silently. A symlink counts only if it
    resolves to a regular file inside the folder; anything else (outside,
    dangling, a directory, a FIFO or device, or an alias of another file of the folder) is
    ignored and named in the second list.
    """
    root = Path(input_dir)
    try:
        real_root = root.resolve(strict=True)
    except OSError:
        return {}, []
    found: dict[str, Candidate] = {}
    ignored: list[str] = []
    try:
        entries = list(os.scandir(real_root))
    except OSError:
        return {}, []
    for entry in sorted(entries, key=lambda e: e.name):
        if _not_an_input_name(entry.name):
            continue
        p = Path(entry.path)
        try:
            if entry.is_symlink():
                target = p.resolve(strict=True)
                if not target.is_relative_to(real_root) or target.parent != real_root:
                    ignored.append(entry.name)
                    continue
            else:
                target = p
            st = os.stat(target)
        except (OSError, RuntimeError):
            ignored.append(entry.name)
            continue
        if not stat.S_ISREG(st.st_mode):
            ignored.append(entry.name)
            continue
        found[entry.name] = Candidate(entry.name, target, st.st_size, st.st_mtime_ns)
    # a symlink to another file of the folder is an alias: the file counts once, by its own name
    by_path: dict[Path, str] = {}
    for name, cand in sorted(found.items(), key=lambda kv: (kv[1].path.name != kv[0], kv[0])):
        if cand.path in by_path:
            del found[name]
            ignored.append(name)
        else:
            by_path[cand.path] = name
    return found, sorted(ignored)


# ----------------------------------------------------------------------------- cursor
class Cursor:
    """The sensor's memory, stored as JSON.

    ``{"v": 1, "files": {name: entry}, "countries_requested_at": float}`` where
    an entry is ``{"size", "mtime_ns", "state", ...}`` with ``state``:

    * ``"seen"``: observed once with this size/mtime; registered when unchanged
      on a later tick and old enough;
    * ``"registered"``: partitions added (``plan_id``, ``n``, ``first``, ``last``),
      ``requested`` tells whether its runs were requested;
    * ``"rejected"``: not a valid input (``error``); retried when it changes.
    """

    def __init__(self, raw: str | None) -> None:
        doc: dict = {}
        if raw:
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = {}
        if not isinstance(doc, dict) or doc.get("v") != 1:
            doc = {}
        self.files: dict[str, dict] = dict(doc.get("files") or {})
        self.countries_requested_at: float = float(doc.get("countries_requested_at") or 0.0)

    def dumps(self) -> str:
        return json.dumps(
            {"v": 1, "files": self.files, "countries_requested_at": self.countries_requested_at},
            sort_keys=True,
            separators=(",", ":"),
        )


def plan_keys(entry: dict) -> list[str]:
    """The keys of a registered cursor entry (``<plan_id>-<index:05d>``, as the catalog makes them)."""
    keys = [batch_key(entry["plan_id"], i) for i in range(int(entry["n"]))]
    if keys and (keys[0] != entry["first"] or keys[-1] != entry["last"]):
        raise ValueError(f"plan {entry['plan_id']}: key format differs from the catalog's")
    return keys


def watching_message(input_dir: str | Path, files: dict[str, dict]) -> str:
    """What a quiet tick says: the folder, and its files by state."""
    states = [e.get("state") for e in files.values()]
    n_csv = sum(s != "ignored" for s in states)
    parts = [f"{states.count(s)} {label}" for s, label in (
        ("registered", "registered"), ("seen", "waiting to be stable"),
        ("rejected", "not valid (see the warnings)"), ("ignored", "ignored")) if states.count(s)]
    detail = f" ({', '.join(parts)})" if parts else ""
    hint = "" if n_csv else "; put a userdays CSV there to start"
    return f"watching {input_dir}: {n_csv} CSV file(s){detail}{hint}"
