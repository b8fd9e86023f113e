"""What a classification was made with, stored inside its table and read by everything downstream.

The ``user_classification`` Parquet file carries a :class:`RunInfo` in its
schema metadata (key ``homeloc.run_info``): the study country as resolved
(name and code), the thresholds and the inputs with their fingerprints.
Exports, ``summary.json`` and every figure read the settings from there,
never from the current defaults, so a classification made in the UI with
another study country is described by its own settings downstream. No Dagster.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

METADATA_KEY = b"homeloc.run_info"


class RunInfoMissing(Exception):
    """The table holds no run information (made by an older homeloc, or not a classification)."""


@dataclass(frozen=True)
class InputInfo:
    """One input file of a classification: where it was, and which version of it."""

    path: str
    plan_id: str
    fingerprint: str
    size: int


@dataclass(frozen=True)
class RunInfo:
    """The settings a classification was made with."""

    study_country: str
    study_country_code: str
    min_userdays: float
    max_reject_share: float
    batch_users: int
    inputs: tuple[InputInfo, ...] = field(default_factory=tuple)
    min_share: float = 0.0
    min_margin: float = 0.0
    study_region: str = ""  # LAYER=CODE, or "" for the plain Local/Tourist classes
    layers: tuple[str, ...] = ()  # NAME=SPEC of each extra region layer
    hll_log2m: int = 11
    hll_explicit_max: int = 160
    #: the output generation this classification's files go to (``publish``)
    generation: str = ""

    @property
    def plan_ids(self) -> tuple[str, ...]:
        """The batch plans (input file versions) this classification covers."""
        return tuple(i.plan_id for i in self.inputs)

    @property
    def study_label(self) -> str:
        """``Germany (DEU)``: how the UI and the figures name the study country."""
        return f"{self.study_country} ({self.study_country_code})"

    def to_json(self) -> str:
        """Compact JSON of every field (inverse of :meth:`from_json`)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> RunInfo:
        """The info from :meth:`to_json` output."""
        d = json.loads(text)
        d["inputs"] = tuple(InputInfo(**i) for i in d.get("inputs", ()))
        d["layers"] = tuple(d.get("layers", ()))
        return cls(**d)

    def attach(self, schema: pa.Schema) -> pa.Schema:
        """``schema`` with this info in its metadata (for a ParquetWriter)."""
        meta = dict(schema.metadata or {})
        meta[METADATA_KEY] = self.to_json().encode()
        return schema.with_metadata(meta)


def read_run_info(path: str | Path) -> RunInfo:
    """The :class:`RunInfo` stored in the Parquet file ``path`` (reads the footer only)."""
    meta = pq.read_schema(path).metadata or {}
    if METADATA_KEY not in meta:
        raise RunInfoMissing(
            f"{path} records no run settings; materialize user_classification again"
        )
    return RunInfo.from_json(meta[METADATA_KEY])
