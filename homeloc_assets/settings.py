"""Configuration of homeloc, read from ``HOMELOC_*`` environment variables.

One dataclass serves the Dagster definitions and the CLI (whose flags override
the environment), so both run with the same settings. Secrets are not here:
the PostgreSQL password is read from the environment at connect time only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

DEFAULT_BATCH_USERS = 50_000


def _cpu_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Settings:
    """Everything a run needs to know. Defaults suit one person on one machine."""

    input_dir: str = "data/input"
    output_dir: str = "out"
    storage_dir: str = ""
    backend: str = "embedded"
    study_country: str = "Germany"
    min_userdays: float = 0.0
    min_share: float = 0.0
    min_margin: float = 0.0
    layers: str = ""
    study_region: str = ""
    batch_users: int = DEFAULT_BATCH_USERS
    workers: int = 0
    max_reject_share: float = 0.01
    #: stop above this share of points in no country (likely swapped or wrong coordinates)
    max_no_country_share: float = 0.2
    countries_path: str = ""
    countries_name_column: str = "ADMIN"
    countries_code_column: str = "ISO_A3_EH"
    cell_resolution: int = 8
    cell_ring: int = 1
    landscape_min_observations: int = 30
    landscape_min_difference: float = 0.10
    landscape_max_q: float = 0.05
    #: batch workers also compute each batch's landscape tables (``homeloc run --no-landscape``: off)
    landscape: bool = True
    #: Dask scheduler (tcp://host:8786 or a scheduler .json file); empty: local process pool
    dask_scheduler: str = ""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Settings from ``HOMELOC_*`` variables (unset ones keep their defaults)."""
        env = dict(os.environ if env is None else env)
        d = cls()

        def get(name: str, default):
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                return type(default)(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a valid {type(default).__name__}") from None

        return cls(
            input_dir=get("HOMELOC_INPUT_DIR", d.input_dir),
            output_dir=get("HOMELOC_OUTPUT_DIR", d.output_dir),
            storage_dir=get("HOMELOC_STORAGE_DIR", d.storage_dir),
            backend=get("HOMELOC_HLL_BACKEND", d.backend),
            study_country=get("HOMELOC_STUDY_COUNTRY", d.study_country),
            min_userdays=get("HOMELOC_MIN_USERDAYS", d.min_userdays),
            min_share=get("HOMELOC_MIN_SHARE", d.min_share),
            min_margin=get("HOMELOC_MIN_MARGIN", d.min_margin),
            layers=get("HOMELOC_LAYERS", d.layers),
            study_region=get("HOMELOC_STUDY_REGION", d.study_region),
            batch_users=get("HOMELOC_BATCH_USERS", d.batch_users),
            workers=get("HOMELOC_WORKERS", d.workers),
            max_reject_share=get("HOMELOC_MAX_REJECT_SHARE", d.max_reject_share),
            max_no_country_share=get("HOMELOC_MAX_NO_COUNTRY_SHARE", d.max_no_country_share),
            countries_path=get("HOMELOC_COUNTRIES_PATH", d.countries_path),
            countries_name_column=get("HOMELOC_COUNTRIES_NAME_COLUMN", d.countries_name_column),
            countries_code_column=get("HOMELOC_COUNTRIES_CODE_COLUMN", d.countries_code_column),
            cell_resolution=get("HOMELOC_CELL_RESOLUTION", d.cell_resolution),
            cell_ring=get("HOMELOC_CELL_RING", d.cell_ring),
            landscape_min_observations=get("HOMELOC_LANDSCAPE_MIN_OBSERVATIONS",
                                           d.landscape_min_observations),
            landscape_min_difference=get("HOMELOC_LANDSCAPE_MIN_DIFFERENCE",
                                         d.landscape_min_difference),
            landscape_max_q=get("HOMELOC_LANDSCAPE_MAX_Q", d.landscape_max_q),
            dask_scheduler=get("HOMELOC_DASK_SCHEDULER", d.dask_scheduler),
        ).validated()

    def validated(self) -> Settings:
        """Check ranges; raise ValueError with the setting's name."""
        if self.backend not in ("embedded", "postgres"):
            raise ValueError(
                f"HOMELOC_HLL_BACKEND={self.backend!r}: choose 'embedded' or 'postgres'"
            )
        if self.batch_users < 1:
            raise ValueError(f"HOMELOC_BATCH_USERS={self.batch_users}: must be at least 1")
        if self.min_userdays < 0:
            raise ValueError(f"HOMELOC_MIN_USERDAYS={self.min_userdays}: must be >= 0")
        if not 0 <= self.min_share <= 1:
            raise ValueError(f"HOMELOC_MIN_SHARE={self.min_share}: must be between 0 and 1")
        if self.min_margin < 0:
            raise ValueError(f"HOMELOC_MIN_MARGIN={self.min_margin}: must be >= 0")
        self.layer_specs  # noqa: B018 - raises LayerError (a ValueError) on a bad spec
        self.study_region_spec  # noqa: B018 - the same for the study region
        if not 0 <= self.max_reject_share <= 1:
            raise ValueError(
                f"max reject share {self.max_reject_share}: must be between 0 and 1"
            )
        self.landscape_params.validated()
        if not 0 <= self.max_no_country_share <= 1:
            raise ValueError(f"HOMELOC_MAX_NO_COUNTRY_SHARE={self.max_no_country_share}: "
                             "must be between 0 and 1")
        if self.dask_scheduler:
            from homeloc_assets.executors import validate_address

            validate_address(self.dask_scheduler)
        return self

    @property
    def landscape_params(self):
        """The landscape's cell size, pooling and test thresholds."""
        from homeloc_assets.inference.landscape import LandscapeParams

        return LandscapeParams(self.cell_resolution, self.cell_ring,
                               self.landscape_min_observations,
                               self.landscape_min_difference, self.landscape_max_q)

    def with_(self, **changes) -> Settings:
        """A copy with ``changes`` (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None}).validated()

    @property
    def layer_specs(self) -> tuple:
        """The extra region layers (``HOMELOC_LAYERS``), parsed: ``geo.layers.LayerSpec``."""
        from homeloc_assets.geo.layers import parse_layers

        return parse_layers(self.layers)

    @property
    def study_region_spec(self) -> tuple[str, str] | None:
        """``(layer, code)`` of ``HOMELOC_STUDY_REGION`` (``LAYER=CODE``), or None."""
        if not self.study_region.strip():
            return None
        layer, sep, code = self.study_region.partition("=")
        layer, code = layer.strip(), code.strip()
        names = ["country", *(s.name for s in self.layer_specs)]
        if not sep or not layer or not code:
            raise ValueError(f"study region {self.study_region!r}: expected LAYER=CODE, e.g. states=DE-SN")
        if layer not in names:
            raise ValueError(f"study region {self.study_region!r}: no layer {layer!r} "
                             f"(layers: {', '.join(names)}; add it with --layer {layer}=SPEC)")
        return layer, code

    @property
    def storage_path(self) -> Path:
        """Where partition files and batch plans live (default: ``<output>/.homeloc``)."""
        return Path(self.storage_dir) if self.storage_dir else Path(self.output_dir) / ".homeloc"

    @property
    def tables_path(self) -> Path:
        """Where the IO manager keeps the asset files (``<storage>/assets``)."""
        return self.storage_path / "assets"

    @property
    def stats_path(self) -> Path:
        """Where each finished batch records its counts (``<storage>/batch_stats``)."""
        return self.storage_path / "batch_stats"

    @property
    def n_workers(self) -> int:
        """Worker processes for batches (0 = one per core)."""
        return self.workers if self.workers > 0 else _cpu_workers()
