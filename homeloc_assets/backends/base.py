"""The backend protocol shared by the embedded and the PostgreSQL engines."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import pyarrow as pa


class BackendError(RuntimeError):
    """A backend cannot do its work (bad settings, server gone for good)."""


class GroupedCardinality(Protocol):
    """What the inference needs of a backend: ``hll_cardinality(hll_union_agg(h)) GROUP BY g``."""

    def grouped_cardinality(
        self, blobs: pa.Array, groups: np.ndarray, n_groups: int
    ) -> np.ndarray:
        """Cardinality of the union of ``blobs`` per group id ``0..n_groups-1``."""
        ...


@runtime_checkable
class HllBackend(GroupedCardinality, Protocol):
    """A whole backend: the grouped cardinality, a name, a check and a close."""

    name: str

    def check(self) -> str:
        """Verify the backend works; return a one-line description (no secrets)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
