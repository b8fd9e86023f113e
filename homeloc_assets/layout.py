"""Where every file of homeloc lives: the one owner of the storage and output folder layout.

Storage folder (``HOMELOC_STORAGE_DIR``, default ``<output>/.homeloc``), :class:`Layout`::

    assets/<asset>.<fmt>                  an unpartitioned asset's table (the IO manager's)
    assets/<asset>/<key>.<fmt>            one batch (partition) of a partitioned asset
    assets/countries.source.json          which countries file ``countries.parquet`` came from
    batch_stats/<key>.json                a batch's counts, written last: the batch is finished
    batch_stats/<key>.users.parquet       a batch's users (hashes, first offsets)
    batch_stats/.locks/<key>.lease        the lease of the worker working on a batch
    batch_stats/landscape/<key>.<kind>.<tag>.parquet   landscape tables the workers left
    lookup/                               country grid and region layer caches (without a
                                          shared cache folder)
    plans/<plan_id>.json                  the batch plans (``catalog``)
    inputs/                               decompressed copies of gzip inputs
    dataset.json                          the plans the next classification covers
    dagster_home/                         the instance ``homeloc run`` and ``homeloc ui`` share

Shared cache folder (``HOMELOC_CACHE_DIR``, default ``$XDG_CACHE_HOME/homeloc``), content-addressed
and shared by output folders: ``lookup/`` (the grid lookups) and ``figures/`` (``figure_cache``).

Output folder (``HOMELOC_OUTPUT_DIR``), :class:`OutputLayout`: ``generations/<generation>/``
(every file of one classification), ``current`` (the published one), one link per
published name, ``stopped_run/`` and ``analysis/`` (see ``homeloc_assets.publish``).

No Dagster here: the batch workers, the CLI and the Dagster definitions all ask this module.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from homeloc_assets.names import COUNTRIES, USER_CLASSIFICATION

#: the generations of an output folder, the link to the published one, and its manifest
GENERATIONS_DIR = "generations"
CURRENT = "current"
MANIFEST = "MANIFEST.json"
#: the figures' folder inside a generation (and the output folder's link to it)
FIGURES_DIR = "figures"
#: the output folder's ``summary.json`` (one of the exports)
SUMMARY_FILE = "summary.json"
#: where ``homeloc_assets.sensitivity`` writes its analysis by default (under the output)
ANALYSIS_DIR = "analysis"
#: where a run stopped by a threshold leaves its rejected rows (under the output)
STOPPED_DIR = "stopped_run"
_GENERATION_RE = re.compile(r"^\d{8}T\d{6}\d{6}-[0-9a-f]{8}$")


def is_generation(name: str) -> bool:
    """True when ``name`` is a homeloc generation's name (``publish.new_generation_id``)."""
    return bool(_GENERATION_RE.match(name))


def table_file(tables: str | os.PathLike[str], asset: str, key: str | None = None,
               fmt: str = "parquet") -> Path:
    """``<tables>/<asset>.<fmt>`` (unpartitioned) or ``<tables>/<asset>/<key>.<fmt>``.

    The rule of the IO manager, whose base folder is given on its own (``Layout.assets``
    in the definitions).
    """
    if key is None:
        return Path(tables) / f"{asset}.{fmt}"
    return Path(tables) / asset / f"{key}.{fmt}"


def lookup_file(lookup: str | os.PathLike[str], stem: str, digest: str) -> Path:
    """``<lookup>/<stem>-<digest>.npz``: a cached grid lookup (``countries`` or
    ``layer-<name>``) of the geometries with hash ``digest``.

    The rule of ``geo.layers.load_layer``, whose cache folder is given on its own
    (``Layout.lookup`` in a run).
    """
    return Path(lookup) / f"{stem}-{digest}.npz"


@dataclass(frozen=True)
class Layout:
    """The storage folder ``root``: every file and folder under it is named here."""

    root: Path
    #: the shared, content-addressed cache folder (None: caches stay in ``root``)
    shared: Path | None = None

    def __init__(self, root: str | os.PathLike[str],
                 shared: str | os.PathLike[str] | None = None) -> None:
        object.__setattr__(self, "root", Path(root))
        object.__setattr__(self, "shared", Path(shared) if shared else None)

    # ------------------------------------------------------------------ asset tables
    @property
    def assets(self) -> Path:
        """Where the IO manager keeps the asset files."""
        return self.root / "assets"

    def table(self, asset: str, key: str | None = None, fmt: str = "parquet") -> Path:
        """The file of ``asset`` (of its partition ``key`` when given)."""
        return table_file(self.assets, asset, key, fmt)

    @property
    def classification(self) -> Path:
        """``user_classification``'s table."""
        return self.table(USER_CLASSIFICATION)

    @property
    def countries(self) -> Path:
        """``countries``'s table."""
        return self.table(COUNTRIES)

    @property
    def countries_source(self) -> Path:
        """Which countries file and columns ``countries.parquet`` was made from (``homeloc run``)."""
        return self.assets / "countries.source.json"

    # ------------------------------------------------------------------ batches
    @property
    def batch_stats(self) -> Path:
        """Where each finished batch records its counts."""
        return self.root / "batch_stats"

    def stats_file(self, key: str) -> Path:
        """Batch ``key``'s counts; it exists exactly when the batch is finished."""
        return self.batch_stats / f"{key}.json"

    def users_file(self, key: str) -> Path:
        """Batch ``key``'s users (hashes and first offsets) for the grouping check."""
        return self.batch_stats / f"{key}.users.parquet"

    def lease_file(self, key: str) -> Path:
        """The lease a worker holds while it works on batch ``key``."""
        return self.batch_stats / ".locks" / f"{key}.lease"

    @property
    def landscape_cache(self) -> Path:
        """The landscape tables the batch workers wrote."""
        return self.batch_stats / "landscape"

    def landscape_cache_file(self, key: str, kind: str, tag: str) -> Path:
        """Batch ``key``'s landscape table ``kind`` (``cells`` or a layer name) made with the
        settings of ``tag`` (``BatchLandscapeSpec.tag``)."""
        return self.landscape_cache / f"{key}.{kind}.{tag}.parquet"

    def landscape_cache_files(self, key: str) -> Iterator[Path]:
        """Every landscape table of batch ``key`` in the cache (any kind and tag)."""
        return self.landscape_cache.glob(f"{key}.*.parquet")

    def landscape_cache_temporaries(self, key: str) -> Iterator[Path]:
        """Temporary files of batch ``key``'s landscape tables (``atomic.atomic_path``'s)."""
        return self.landscape_cache.glob(f".{key}.*.tmp")

    # ------------------------------------------------------------------ the rest
    @property
    def lookup(self) -> Path:
        """Caches of the country grid lookup and of the region layers (content-addressed)."""
        return (self.shared or self.root) / "lookup"

    @property
    def figure_cache(self) -> Path | None:
        """The figures drawn before, by content (``figure_cache``); None without a shared folder."""
        return self.shared / "figures" if self.shared else None

    def country_lookup_file(self, digest: str) -> Path:
        """The country grid lookup of the geometries with hash ``digest``."""
        return lookup_file(self.lookup, "countries", digest)

    def layer_lookup_file(self, name: str, digest: str) -> Path:
        """The grid lookup of region layer ``name`` for the file state with hash ``digest``."""
        return lookup_file(self.lookup, f"layer-{name}", digest)

    @property
    def plans(self) -> Path:
        """The batch plans, one JSON file per plan."""
        return self.root / "plans"

    def plan_file(self, plan_id: str) -> Path:
        """The plan ``plan_id``."""
        return self.plans / f"{plan_id}.json"

    @property
    def inputs(self) -> Path:
        """Decompressed copies of gzip-compressed inputs."""
        return self.root / "inputs"

    @property
    def dataset_file(self) -> Path:
        """The plans the next classification covers."""
        return self.root / "dataset.json"

    @property
    def dagster_home(self) -> Path:
        """The Dagster instance ``homeloc run`` and ``homeloc ui`` share."""
        return self.root / "dagster_home"


@dataclass(frozen=True)
class OutputLayout:
    """The output folder ``root``: generations, the published set and its links."""

    root: Path

    def __init__(self, root: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def generations(self) -> Path:
        """Every generation's folder is in here."""
        return self.root / GENERATIONS_DIR

    def generation(self, name: str) -> Path:
        """The folder of generation ``name`` (ValueError for a name that is none)."""
        if not is_generation(name):
            raise ValueError(f"not a homeloc generation name: {name!r}")
        return self.generations / name

    @property
    def current(self) -> Path:
        """The link to the published generation."""
        return self.root / CURRENT

    @property
    def summary(self) -> Path:
        """The published ``summary.json``."""
        return self.root / SUMMARY_FILE

    @property
    def figures(self) -> Path:
        """The published figures."""
        return self.root / FIGURES_DIR

    @property
    def analysis(self) -> Path:
        """Where ``homeloc sensitivity`` and ``validate`` write by default (beside the set)."""
        return self.root / ANALYSIS_DIR

    @property
    def stopped_rejects(self) -> Path:
        """The rejected rows of a run a threshold stopped."""
        return self.root / STOPPED_DIR / "rejected_rows.csv"
