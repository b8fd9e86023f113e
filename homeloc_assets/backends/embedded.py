"""The default backend: the in-process, vectorised postgresql-hll engine."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from homeloc_assets import hll


class EmbeddedBackend:
    """Grouped unions with ``homeloc_assets.hll``; needs no database."""

    name = "embedded"
    #: ``grouped_cardinality`` takes a parsed column (``hll.ParsedColumn``) as well as bytes
    takes_parsed = True

    def grouped_cardinality(
        self, blobs: pa.Array, groups: np.ndarray, n_groups: int
    ) -> np.ndarray:
        """Cardinality of the union per group, as ``hll_union_agg`` would give it."""
        return hll.grouped_cardinality(blobs, groups, n_groups)

    def check(self) -> str:
        """Nothing to connect to."""
        return "embedded postgresql-hll engine"

    def close(self) -> None:
        """Nothing to release."""
