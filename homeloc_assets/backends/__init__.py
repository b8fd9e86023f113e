"""HLL backends: the grouped union + cardinality the inference needs.

``embedded`` (default) runs the in-process engine of ``homeloc_assets.hll``;
``postgres`` sends each batch to PostgreSQL's hll extension in one COPY and
one ``hll_union_agg ... GROUP BY``. Both return the same numbers.

:data:`BACKENDS` is the one registry: a new backend is a module with a class
that follows :class:`~homeloc_assets.backends.base.HllBackend` and one entry
here; the setting ``HOMELOC_HLL_BACKEND``, the CLI's ``--backend`` choices, the
resources and the batch workers all ask this registry. Entries name their
class by module so that importing the registry (``settings`` does) loads no
backend, and no database driver.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from homeloc_assets.backends.base import BackendError, GroupedCardinality, HllBackend

if TYPE_CHECKING:
    from homeloc_assets.backends.embedded import EmbeddedBackend
    from homeloc_assets.backends.postgres import PostgresBackend, PostgresSettings


@dataclass(frozen=True)
class BackendEntry:
    """Where a backend's class lives and whether it takes PostgreSQL connection settings."""

    module: str
    cls: str
    uses_postgres: bool = False

    def load(self) -> type:
        """The backend class (imports its module)."""
        return getattr(importlib.import_module(self.module), self.cls)


BACKENDS: dict[str, BackendEntry] = {
    "embedded": BackendEntry("homeloc_assets.backends.embedded", "EmbeddedBackend"),
    "postgres": BackendEntry("homeloc_assets.backends.postgres", "PostgresBackend",
                             uses_postgres=True),
}


def uses_postgres(name: str) -> bool:
    """Whether backend ``name`` connects to PostgreSQL (so it needs connection settings)."""
    return _entry(name).uses_postgres


def make_backend(name: str, pg: PostgresSettings | None = None) -> HllBackend:
    """A new backend ``name``; ``pg`` for a PostgreSQL one (default: from the environment)."""
    entry = _entry(name)
    cls = entry.load()
    if not entry.uses_postgres:
        return cls()
    if pg is None:
        from homeloc_assets.backends.postgres import PostgresSettings

        pg = PostgresSettings.from_env()
    return cls(pg)


def _entry(name: str) -> BackendEntry:
    try:
        return BACKENDS[name]
    except KeyError:
        raise BackendError(
            f"unknown HLL backend {name!r}: choose one of {', '.join(BACKENDS)}") from None


_LAZY = {"EmbeddedBackend": "homeloc_assets.backends.embedded",
         "PostgresBackend": "homeloc_assets.backends.postgres",
         "PostgresSettings": "homeloc_assets.backends.postgres"}


def __getattr__(name: str):
    """The backend classes on first use (PEP 562): the registry itself imports none."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "BackendEntry",
    "BackendError",
    "EmbeddedBackend",
    "GroupedCardinality",
    "HllBackend",
    "PostgresBackend",
    "PostgresSettings",
    "make_backend",
    "uses_postgres",
]
