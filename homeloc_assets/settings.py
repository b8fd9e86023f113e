"""Configuration of homeloc, read from ``HOMELOC_*`` environment variables.

One dataclass owns every setting (default, variable, flag, help) and serves the
Dagster definitions and the CLI (whose flags override the environment), so both
run with the same settings. Secrets are not here:
the PostgreSQL password is read from the environment at connect time only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields, replace
from pathlib import Path

from homeloc_assets.backends import BACKENDS
from homeloc_assets.layout import Layout, OutputLayout

#: where each setting goes: ``run`` the ``HomelocConfig`` resource, ``backend`` the
#: ``HllBackendResource``, ``operations`` the sensors and schedules (fixed when the
#: definitions load)
GROUPS = ("run", "backend", "operations")


@dataclass(frozen=True)
class Option:
    """How one setting is given: its variable, ``homeloc run`` flag, help and README default."""

    env: str | None
    help: str
    flag: str | None = None
    group: str = "run"
    #: the default as the README shows it, when not the value itself (e.g. ``one per core``)
    shown: str | None = None
    metavar: str | None = None
    #: the flag may be repeated; the values are joined with ``;`` (the variable's form)
    repeat: bool = False
    choices: tuple[str, ...] | None = None


def setting(default, env: str | None, help: str, **kw):
    """A ``Settings`` field: its default and its :class:`Option` (in the field's metadata)."""
    return field(default=default, metadata={"option": Option(env, help, **kw)})


#: variables read outside ``Settings`` (documented in the README's table too): the
#: password is read from the environment only at connect time and never stored
OTHER_ENV = {
    "HOMELOC_PG_PASSWORD": "PostgreSQL password, read only at connect time",
    "PGPASSWORD": "libpq's own password variable (kept out of messages like HOMELOC_PG_PASSWORD)",
    "DAGSTER_HOME": "the Dagster instance (homeloc run --dagster-home)",
    "XDG_CACHE_HOME": "where the shared cache goes when HOMELOC_CACHE_DIR is unset",
}

PASSWORD_ENV = "HOMELOC_PG_PASSWORD"


def _cpu_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Settings:
    """Everything a run needs to know. Defaults suit one person on one machine.

    This class owns every setting: its default, variable, ``homeloc run`` flag and
    help text (:func:`options`). The Dagster resources, the CLI and the README's
    configuration table are derived from it or checked against it by tests.
    """

    input_dir: str = setting("data/input", "HOMELOC_INPUT_DIR",
                             "folder the input sensor watches for *.csv")
    output_dir: str = setting("out", "HOMELOC_OUTPUT_DIR", "export folder", flag="--out",
                             metavar="FOLDER")
    storage_dir: str = setting("", "HOMELOC_STORAGE_DIR", "partition files, batch plans, caches",
                               shown="<output>/.homeloc")
    cache_dir: str = setting(
        "", "HOMELOC_CACHE_DIR",
        "content-addressed caches shared by output folders (country grid lookup, figures)",
        flag="--cache-dir", metavar="FOLDER", shown="$XDG_CACHE_HOME/homeloc")
    backend: str = setting("embedded", "HOMELOC_HLL_BACKEND", "HLL engine", flag="--backend",
                           group="backend", choices=tuple(BACKENDS))
    pg_dsn: str = setting("", "HOMELOC_PG_DSN", "libpq DSN or URL, best without password",
                          group="backend")
    pg_host: str = setting("127.0.0.1", "HOMELOC_PG_HOST", "PostgreSQL host", group="backend")
    pg_port: int = setting(5432, "HOMELOC_PG_PORT", "PostgreSQL port", group="backend")
    pg_db: str = setting("postgres", "HOMELOC_PG_DB", "PostgreSQL database", group="backend")
    pg_user: str = setting("postgres", "HOMELOC_PG_USER", "PostgreSQL role", group="backend")
    pg_retries: int = setting(5, "HOMELOC_PG_RETRIES",
                              "reconnect attempts when the server goes away", group="backend")
    study_country: str = setting("Germany", "HOMELOC_STUDY_COUNTRY", "name or ISO alpha-3 code",
                                 flag="--study-country")
    min_userdays: float = setting(
        0.0, "HOMELOC_MIN_USERDAYS", "users with fewer distinct userdays are undetermined",
        flag="--min-userdays")
    min_share: float = setting(
        0.0, "HOMELOC_MIN_SHARE",
        "users whose home has a smaller share of their userdays are undetermined",
        flag="--min-share")
    min_margin: float = setting(
        0.0, "HOMELOC_MIN_MARGIN",
        "users whose home leads the runner-up by fewer userdays are undetermined",
        flag="--min-margin")
    layers: str = setting(
        "", "HOMELOC_LAYERS",
        "extra region layer, repeatable: NAME=h3:RES or NAME=PATH[#NAME_COLUMN,CODE_COLUMN]",
        flag="--layer", metavar="NAME=SPEC", repeat=True)
    study_region: str = setting(
        "", "HOMELOC_STUDY_REGION",
        "a region of a layer inside the study country: classes Local, Domestic tourist, "
        "International tourist", flag="--study-region", metavar="LAYER=CODE")
    batch_users: int = setting(50_000, "HOMELOC_BATCH_USERS", "users per batch",
                               flag="--batch-users")
    workers: int = setting(0, "HOMELOC_WORKERS", "worker processes for batches",
                           flag="--workers", shown="one per core")
    max_reject_share: float = setting(
        0.01, "HOMELOC_MAX_REJECT_SHARE", "fail when more than this share of rows is rejected",
        flag="--max-reject-share")
    max_no_country_share: float = setting(
        0.2, "HOMELOC_MAX_NO_COUNTRY_SHARE",
        "fail when more than this share of points is in no country (likely swapped or wrong "
        "coordinates)", flag="--max-no-country-share")
    countries_path: str = setting("", "HOMELOC_COUNTRIES_PATH",
                                  "own countries file (default: Natural Earth 1:10m)",
                                  shown="Natural Earth 1:10m")
    countries_name_column: str = setting("ADMIN", "HOMELOC_COUNTRIES_NAME_COLUMN",
                                         "name column of the countries file")
    countries_code_column: str = setting("ISO_A3_EH", "HOMELOC_COUNTRIES_CODE_COLUMN",
                                         "code column of the countries file")
    cell_resolution: int = setting(8, "HOMELOC_CELL_RESOLUTION",
                                   "H3 resolution of the landscape cells",
                                   flag="--cell-resolution")
    cell_ring: int = setting(1, "HOMELOC_CELL_RING",
                             "neighbour rings pooled per landscape cell", flag="--cell-ring")
    landscape_min_observations: int = setting(
        30, "HOMELOC_LANDSCAPE_MIN_OBSERVATIONS", "fewer pooled observations: too little data")
    landscape_min_difference: float = setting(
        0.10, "HOMELOC_LANDSCAPE_MIN_DIFFERENCE", "share difference a cell needs")
    landscape_max_q: float = setting(0.05, "HOMELOC_LANDSCAPE_MAX_Q",
                                     "Benjamini-Yekutieli q limit")
    #: batch workers also compute each batch's landscape tables (``homeloc run --no-landscape``: off)
    landscape: bool = setting(
        True, None, "skip the landscape cells (landscape_cells.parquet/.gpkg and maps)",
        flag="--no-landscape")
    dask_scheduler: str = setting(
        "", "HOMELOC_DASK_SCHEDULER",
        "run the batches on this Dask cluster, tcp://host:8786 or a scheduler file",
        flag="--dask", metavar="SCHEDULER", shown="a local process pool")
    dask_wait: float = setting(
        120.0, "HOMELOC_DASK_WAIT",
        "seconds to wait for the Dask scheduler, then for a first worker")
    lease_timeout: float = setting(
        60.0, "HOMELOC_LEASE_TIMEOUT",
        "seconds without heartbeat before a batch lease held on another machine is taken over")
    sensor_interval_seconds: int = setting(30, "HOMELOC_SENSOR_INTERVAL_SECONDS",
                                           "seconds between input sensor ticks",
                                           group="operations")
    sensor_settle_seconds: int = setting(
        30, "HOMELOC_SENSOR_SETTLE_SECONDS",
        "a file's mtime must be at least this old before it is registered", group="operations")
    automation_interval_seconds: int = setting(
        30, "HOMELOC_AUTOMATION_INTERVAL_SECONDS",
        "seconds between evaluations of the automation conditions", group="operations")
    heal_cron: str = setting("0 2 * * *", "HOMELOC_HEAL_CRON", "cron of the nightly heal",
                             group="operations")
    heal_timezone: str = setting("UTC", "HOMELOC_HEAL_TIMEZONE",
                                 "time zone of the nightly heal's cron", group="operations")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``HOMELOC_*`` variables (unset or empty ones keep their defaults).

        A password inside ``HOMELOC_PG_DSN`` is cut out of the DSN here: it is not kept
        (the backend reads it from the environment again at connect time).
        """
        env = os.environ if env is None else env
        values = {}
        for f, opt in options():
            raw = env.get(opt.env) if opt.env else None
            if raw is None or raw == "":
                continue
            try:
                values[f.name] = type(f.default)(raw)
            except ValueError:
                raise ValueError(
                    f"{opt.env}={raw!r} is not a valid {type(f.default).__name__}") from None
        if values.get("pg_dsn"):
            from homeloc_assets.backends.postgres import split_password

            values["pg_dsn"] = split_password(values["pg_dsn"])[0]
        return cls(**values).validated()

    def group(self, name: str) -> dict[str, object]:
        """The values of the settings of one of :data:`GROUPS`."""
        return {f.name: getattr(self, f.name) for f, opt in options() if opt.group == name}

    @property
    def pg_settings(self):
        """``backends.PostgresSettings`` for these settings (the password stays in the
        environment)."""
        from homeloc_assets.backends.postgres import PostgresSettings

        return PostgresSettings(dsn=self.pg_dsn or None, host=self.pg_host, port=self.pg_port,
                                dbname=self.pg_db, user=self.pg_user, retries=self.pg_retries)

    def validated(self) -> Settings:
        """Check ranges; raise ValueError with the setting's name."""
        if self.backend not in BACKENDS:
            raise ValueError(f"HOMELOC_HLL_BACKEND={self.backend!r}: choose "
                             + " or ".join(repr(b) for b in BACKENDS))
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
        if self.dask_wait < 0:
            raise ValueError(f"HOMELOC_DASK_WAIT={self.dask_wait:g}: must be >= 0")
        if not self.lease_timeout > 0:
            raise ValueError(f"HOMELOC_LEASE_TIMEOUT={self.lease_timeout:g}: "
                             "must be more than 0 seconds")
        if not 0 < self.pg_port < 65536:
            raise ValueError(f"HOMELOC_PG_PORT={self.pg_port}: must be a port (1-65535)")
        for name in ("pg_retries", "sensor_settle_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{option(name).env}={getattr(self, name)}: must be >= 0")
        for name in ("sensor_interval_seconds", "automation_interval_seconds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{option(name).env}={getattr(self, name)}: must be at least 1")
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
    def cache_path(self) -> Path:
        """The shared cache folder: ``HOMELOC_CACHE_DIR``, else ``$XDG_CACHE_HOME/homeloc``
        (``~/.cache/homeloc`` when that is unset)."""
        if self.cache_dir:
            return Path(self.cache_dir)
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(base) / "homeloc"

    @property
    def layout(self) -> Layout:
        """Every file and folder of the storage folder (:class:`homeloc_assets.layout.Layout`)."""
        return Layout(self.storage_path, self.cache_path)

    @property
    def output_layout(self) -> OutputLayout:
        """Every file and folder of the output folder."""
        return OutputLayout(self.output_dir)

    @property
    def tables_path(self) -> Path:
        """Where the IO manager keeps the asset files (``<storage>/assets``)."""
        return self.layout.assets

    @property
    def stats_path(self) -> Path:
        """Where each finished batch records its counts (``<storage>/batch_stats``)."""
        return self.layout.batch_stats

    @property
    def n_workers(self) -> int:
        """Worker processes for batches (0 = one per core)."""
        return self.workers if self.workers > 0 else _cpu_workers()


DEFAULTS = Settings()
DEFAULT_BATCH_USERS = DEFAULTS.batch_users


def options() -> list[tuple[Field, Option]]:
    """Every field of :class:`Settings` with its :class:`Option`, in order."""
    return [(f, f.metadata["option"]) for f in fields(Settings)]


def shown_default(name: str) -> str:
    """The default of ``name`` as the README and ``--help`` show it ("" for none)."""
    opt, default = option(name), Settings.__dataclass_fields__[name].default
    if opt.shown:
        return opt.shown
    return f"{default:g}" if isinstance(default, float) else str(default)


def option(name: str) -> Option:
    """The :class:`Option` of the setting ``name``."""
    return Settings.__dataclass_fields__[name].metadata["option"]
