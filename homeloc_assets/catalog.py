"""The batch catalog: which input files are cut into which user batches.

A batch plan is stored as JSON under ``<storage>/plans/<plan_id>.json``; the
dynamic partition keys are ``<plan_id>-<index>``. The plan id covers the file's
fingerprint and the batch size, so a changed file or batch size gives new keys
and old results can never mix with new ones.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from homeloc_assets.atomic import write_text_atomic
from homeloc_assets.inputs import BatchPlan, plan_batches


@dataclass(frozen=True)
class BatchRef:
    """One batch: its partition key, file and byte range."""

    key: str
    plan_id: str
    index: int
    path: str
    start: int
    end: int
    size: int = -1  # the file as planned: a batch refuses a file that changed since
    mtime_ns: int = -1
    fingerprint: str = ""


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
        self.root = Path(storage_dir)
        self.plans_dir = self.root / "plans"
        self._plans: dict[str, BatchPlan] = {}  # read once per Catalog: batch() is per key

    def register(self, path: str | Path, batch_users: int) -> tuple[str, list[str]]:
        """Plan ``path`` (seeks only), store the plan, return ``(plan_id, keys)``."""
        plan = plan_batches(path, batch_users)
        plan_id = plan_id_for(plan, batch_users)
        doc = {"plan_id": plan_id, "batch_users": batch_users, "plan": plan.to_dict()}
        target = self.plans_dir / f"{plan_id}.json"
        if not target.exists() or json.loads(target.read_text()) != doc:
            write_text_atomic(target, json.dumps(doc, indent=1, sort_keys=True))
        self._plans[plan_id] = plan
        return plan_id, [batch_key(plan_id, b.index) for b in plan.batches]

    def load_plan(self, plan_id: str) -> BatchPlan:
        """The stored plan ``plan_id``."""
        if plan_id not in self._plans:
            target = self.plans_dir / f"{plan_id}.json"
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
                        plan.size, plan.mtime_ns, plan.fingerprint)

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

    def plan_ids(self) -> list[str]:
        """All stored plan ids."""
        if not self.plans_dir.exists():
            return []
        return sorted(p.stem for p in self.plans_dir.glob("*.json"))
