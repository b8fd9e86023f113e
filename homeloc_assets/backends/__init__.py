"""HLL backends: the grouped union + cardinality the inference needs.

``embedded`` (default) runs the in-process engine of ``homeloc_assets.hll``;
``postgres`` sends each batch to PostgreSQL's hll extension in one COPY and
one ``hll_union_agg ... GROUP BY``. Both return the same numbers.
"""

from __future__ import annotations

from homeloc_assets.backends.base import BackendError, GroupedCardinality, HllBackend
from homeloc_assets.backends.embedded import EmbeddedBackend
from homeloc_assets.backends.postgres import PostgresBackend, PostgresSettings

BACKENDS = ("embedded", "postgres")


def make_backend(name: str, pg: PostgresSettings | None = None) -> HllBackend:
    """The backend called ``name`` (``embedded`` or ``postgres``)."""
    if name == "embedded":
        return EmbeddedBackend()
    if name == "postgres":
        return PostgresBackend(pg or PostgresSettings.from_env())
    raise BackendError(f"unknown HLL backend {name!r}: choose one of {', '.join(BACKENDS)}")


__all__ = [
    "BACKENDS",
    "BackendError",
    "EmbeddedBackend",
    "GroupedCardinality",
    "HllBackend",
    "PostgresBackend",
    "PostgresSettings",
    "make_backend",
]
