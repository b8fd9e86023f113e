"""The batch catalog: which input files are cut into which user batches.

A batch plan is stored as JSON under ``<storage>/plans/<plan_id>.json``; the
dynamic partition keys are ``<plan_id>-<index>``. The plan id covers the file's
fingerprint and the batch size, so a changed file or batch size gives new keys
and old results can never mix with new ones.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from homeloc_assets.atomic import write_text_atomic
from homeloc_assets.inputs import BatchPlan, InputError, plan_batches
from homeloc_assets.layout import Layout


@dataclass(frozen=True)
class BatchRef:
    """One batch: its partition key, file and byte range."""

    key: str
    plan_id: str
    index: int
    path: str
    start: int
    end: int
    #: the planned file's (size, mtime_ns, fingerprint): a batch read checks the file is still it
    expect: tuple[int, int, str] | None = None
    #: params code of the file's first valid hll (rows with other params are rejected)
    hll_params: int | None = None


def is_gzip(path: str | Path) -> bool:
    """True when ``path`` starts with the gzip magic bytes."""
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def decompressed(path: str | Path, into: str | Path) -> Path:
    """``path`` itself, or for a gzip file its decompressed copy in ``into`` (made once, reused).

    The copy's name carries a hash of the source's resolved path, size and
    mtime, so a changed source gives a new copy (and new batch keys); it is
    written to a temporary name and renamed, so a killed run leaves no half
    copy. Progress goes to stderr for big files. A damaged gzip stream raises
    :class:`InputError` with the command that decompresses it by hand.
    """
    path = Path(path)
    try:
        if not is_gzip(path):
            return path
        st = path.stat()
    except OSError:
        return path  # planning reports it
    ident = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    name = path.name[:-3] if path.name.lower().endswith(".gz") else path.name
    stem = re.sub(r"[^A-Za-z0-9_.]", "_", Path(name).stem)[:40] or "input"
    target = Path(into) / f"{stem}-{hashlib.sha1(ident.encode()).hexdigest()[:8]}.csv"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    t0 = last = time.monotonic()
    try:
        with gzip.open(path, "rb") as src, open(tmp, "wb") as dst:
            while chunk := src.read(16 << 20):
                dst.write(chunk)
                now = time.monotonic()
                if now - last >= 2.0:
                    done = src.fileobj.tell() if src.fileobj is not None else 0  # type: ignore[attr-defined]
                    print(f"homeloc: decompressing {path.name}: {done / max(st.st_size, 1):.0%} "
                          f"({now - t0:.0f} s)", file=sys.stderr, flush=True)
                    last = now
        os.replace(tmp, target)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, gzip.BadGzipFile) and exc.errno:
            raise  # the machine (disk full, permissions), not the input
        raise InputError(
            f"{path}: not a complete gzip file ({exc}); check it with `gzip -t {path}` or "
            f"decompress it by hand: gunzip -k {path}"
        ) from None
    return target


def plan_id_for(plan: BatchPlan, batch_users: int) -> str:
    """``<stem>-<8 hex>`` from the file name, its fingerprint, mtime and the batch size.

    The fingerprint reads only the file's ends; the modification time makes a
    rewrite in the middle give new keys too.
    """
    stem = re.sub(r"[^A-Za-z0-9_]", "_", Path(plan.path).stem)[:40] or "input"
    ident = f"{plan.fingerprint}:{plan.size}:{plan.mtime_ns}:{batch_users}"
    digest = hashlib.sha1(ident.encode()).hexdigest()[:8]
    return f"{stem}-{digest}"


def batch_key(plan_id: str, index: int) -> str:
    """The partition key of batch ``index`` of plan ``plan_id`` (keys sort in file order)."""
    return f"{plan_id}-{index:05d}"


def split_key(key: str) -> tuple[str, int]:
    """``(plan_id, index)`` of a partition key."""
    plan_id, _, index = key.rpartition("-")
    if not plan_id or not index.isdigit():
        raise ValueError(f"not a homeloc batch key: {key!r}")
    return plan_id, int(index)


class Catalog:
    """Plans on disk, looked up by partition key."""

    def __init__(self, storage_dir: str | Path) -> None:
        self.layout = Layout(storage_dir)
        self.plans_dir = self.layout.plans
        self._plans: dict[str, BatchPlan] = {}  # read once per Catalog: batch() is per key

    def register(self, path: str | Path, batch_users: int) -> tuple[str, list[str]]:
        """Plan ``path`` (seeks only), store the plan, return ``(plan_id, keys)``.

        A gzip-compressed input (``.gz`` or gzip magic bytes) is first
        decompressed once into ``<storage>/inputs/`` (:func:`decompressed`) and
        that copy is planned and read.
        """
        path = decompressed(path, self.layout.inputs)
        plan = plan_batches(path, batch_users)
        plan_id = plan_id_for(plan, batch_users)
        doc = {"plan_id": plan_id, "batch_users": batch_users, "plan": plan.to_dict()}
        target = self.layout.plan_file(plan_id)
        if not target.exists() or json.loads(target.read_text()) != doc:
            write_text_atomic(target, json.dumps(doc, indent=1, sort_keys=True))
        self._plans[plan_id] = plan
        return plan_id, [batch_key(plan_id, b.index) for b in plan.batches]

    def dataset_plan_of(self, path: str | Path, size: int, mtime_ns: int) -> tuple[str, list[str]] | None:
        """The data set's plan of ``path`` as the file is now (same size and mtime): ``(plan_id, keys)``.

        Whatever batch size that plan was made with: the input sensor keeps the
        batches ``homeloc run --batch-users N`` made of the same file instead of
        re-planning it with its own size (which would retire them). None when
        the data set holds no plan of that file in that state.
        """
        want = str(Path(path).resolve())
        for plan_id in self.dataset() or []:
            try:
                plan = self.load_plan(plan_id)
            except (KeyError, OSError, ValueError):
                continue
            if (str(Path(plan.path).resolve()) == want and plan.size == size
                    and plan.mtime_ns == mtime_ns):
                return plan_id, self.keys(plan_id)
        return None

    def load_plan(self, plan_id: str) -> BatchPlan:
        """The stored plan ``plan_id``."""
        if plan_id not in self._plans:
            target = self.layout.plan_file(plan_id)
            if not target.exists():
                raise KeyError(f"no batch plan {plan_id!r} in {self.plans_dir}")
            self._plans[plan_id] = BatchPlan.from_dict(json.loads(target.read_text())["plan"])
        return self._plans[plan_id]

    def batch(self, key: str) -> BatchRef:
        """The batch behind partition ``key``."""
        plan_id, index = split_key(key)
        plan = self.load_plan(plan_id)
        if index >= len(plan.batches):
            raise KeyError(f"batch {key!r}: plan {plan_id!r} has {len(plan.batches)} batches")
        b = plan.batches[index]
        return BatchRef(key, plan_id, index, str(plan.path), b.start, b.end,
                        (plan.size, plan.mtime_ns, plan.fingerprint), plan.hll_params)

    def keys(self, plan_id: str) -> list[str]:
        """The partition keys of stored plan ``plan_id``, in file order."""
        return [batch_key(plan_id, b.index) for b in self.load_plan(plan_id).batches]

    def keys_to_retire(
        self,
        existing: Sequence[str],
        *,
        plan_ids: Iterable[str] = (),
        paths: Iterable[str | Path] = (),
        keep_plan: str | None = None,
    ) -> list[str]:
        """Existing partition keys of the plans ``plan_ids`` or of plans of the files ``paths``.

        Keys of ``keep_plan`` are never retired. Plans are read from the catalog
        (small JSON files), not the inputs.
        """
        plan_ids = set(plan_ids)
        paths = {str(Path(p).resolve()) for p in paths}
        cache: dict[str, str | None] = {}
        out = []
        for key in existing:
            try:
                plan_id, _ = split_key(key)
            except ValueError:
                continue
            if plan_id == keep_plan:
                continue
            if plan_id in plan_ids or (paths and self._plan_path(plan_id, cache) in paths):
                out.append(key)
        return out

    def _plan_path(self, plan_id: str, cache: dict[str, str | None]) -> str | None:
        """The resolved input path of ``plan_id`` (None: no such plan), memoised in ``cache``."""
        if plan_id not in cache:
            try:
                cache[plan_id] = str(Path(self.load_plan(plan_id).path).resolve())
            except (KeyError, OSError, ValueError):
                cache[plan_id] = None
        return cache[plan_id]

    # ------------------------------------------------------------ the data set
    # Which plans the results describe. ``homeloc run --input F`` makes it F's
    # plan; the input sensor makes it the plans of every registered file of
    # the watched folder. The classification reads only these plans' batches,
    # whatever else the Dagster instance holds from earlier inputs.

    @property
    def dataset_path(self) -> Path:
        """``<storage>/dataset.json``: the plans the next classification covers."""
        return self.layout.dataset_file

    def _dataset_doc(self) -> dict:
        """``dataset.json`` as stored (empty when missing or unreadable)."""
        try:
            doc = json.loads(self.dataset_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def set_dataset(self, plan_ids: Iterable[str], source: str) -> None:
        """Make ``plan_ids`` the data set (atomically; ``source`` says who chose it)."""
        doc = {"plans": sorted(set(plan_ids)), "source": source}
        if self._dataset_doc() != doc:
            write_text_atomic(self.dataset_path, json.dumps(doc, indent=1, sort_keys=True))

    def dataset(self) -> list[str] | None:
        """The plans of the data set, or None when nothing chose one yet."""
        plans = self._dataset_doc().get("plans")
        return list(plans) if isinstance(plans, list) else None

    def dataset_source(self) -> str | None:
        """Who chose the data set (``homeloc run``, the input sensor), or None."""
        return self._dataset_doc().get("source")

    def dataset_keys(self, available: Sequence[str], plan_ids: Sequence[str] | None) -> list[str]:
        """The keys of ``available`` that belong to ``plan_ids`` (all of them when None).

        Every batch of every plan must be available, else :class:`KeyError`
        names the first missing one: a result never covers part of an input.
        """
        if plan_ids is None:
            return list(available)
        have = set(available)
        for plan_id in plan_ids:
            missing = [k for k in self.keys(plan_id) if k not in have]
            if missing:
                path = self._plan_path(plan_id, {}) or plan_id
                raise KeyError(f"batch {missing[0]} of {path} is not a materialized partition "
                               f"({len(missing)} of {len(self.keys(plan_id))} missing): "
                               "materialize the batches first")
        wanted = set(plan_ids)
        return [k for k in available if split_key(k)[0] in wanted]

    def plan_ids(self) -> list[str]:
        """All stored plan ids."""
        if not self.plans_dir.exists():
            return []
        return sorted(p.stem for p in self.plans_dir.glob("*.json"))
