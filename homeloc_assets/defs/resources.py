"""Dagster resources: the run settings and the HLL backend (embedded or PostgreSQL).

Both are views of :class:`~homeloc_assets.settings.Settings`, which owns every
setting: each field's default and description here come from it, and
``homeloc_tests/test_cli.py`` checks that the fields are exactly its ``run`` and
``backend`` groups with the same types.
"""

from __future__ import annotations

import os

import dagster as dg
from pydantic import Field

from homeloc_assets.backends import HllBackend, PostgresSettings, make_backend, uses_postgres
from homeloc_assets.catalog import Catalog
from homeloc_assets.layout import Layout
from homeloc_assets.settings import PASSWORD_ENV, Settings, option


def _field(name: str, **kw):
    """The resource field of the setting ``name``: its default and help, naming its variable."""
    opt = option(name)
    default = Settings.__dataclass_fields__[name].default
    text = opt.help[:1].upper() + opt.help[1:] + (f" ({opt.env})." if opt.env else ".")
    return Field(default=default, description=text, **kw)


class HomelocConfig(dg.ConfigurableResource):
    """Where data lives and how it is judged (see README, "Configuration").

    The ``run`` settings; the backend's are in :class:`HllBackendResource`
    (:meth:`settings_with` joins both).
    """

    input_dir: str = _field("input_dir")
    output_dir: str = _field("output_dir")
    storage_dir: str = _field("storage_dir")
    cache_dir: str = _field("cache_dir")
    study_country: str = _field("study_country")
    min_userdays: float = _field("min_userdays")
    min_share: float = _field("min_share")
    min_margin: float = _field("min_margin")
    layers: str = _field("layers")
    study_region: str = _field("study_region")
    batch_users: int = _field("batch_users")
    workers: int = _field("workers")
    max_reject_share: float = _field("max_reject_share")
    max_no_country_share: float = _field("max_no_country_share")
    countries_path: str = _field("countries_path")
    countries_name_column: str = _field("countries_name_column")
    countries_code_column: str = _field("countries_code_column")
    cell_resolution: int = _field("cell_resolution")
    cell_ring: int = _field("cell_ring")
    landscape_min_observations: int = _field("landscape_min_observations")
    landscape_min_difference: float = _field("landscape_min_difference")
    landscape_max_q: float = _field("landscape_max_q")
    landscape: bool = Field(default=True, description=(
        "Batch workers also compute each batch's landscape tables (off: --no-landscape)."))
    dask_scheduler: str = _field("dask_scheduler")
    dask_wait: float = _field("dask_wait")
    lease_timeout: float = _field("lease_timeout")

    @classmethod
    def from_settings(cls, s: Settings) -> HomelocConfig:
        """The resource for ``s`` (storage resolved to its default if unset)."""
        values = s.group("run")
        values["storage_dir"] = str(s.storage_path)
        return cls(**values)

    @property
    def settings(self) -> Settings:
        """The run settings as a plain ``Settings`` (backend settings at their defaults:
        :meth:`settings_with` adds them)."""
        return Settings(**{name: getattr(self, name) for name in Settings().group("run")})

    def settings_with(self, hll_backend: HllBackendResource) -> Settings:
        """All settings: these and the backend's."""
        return Settings(**{name: getattr(self, name) for name in Settings().group("run")},
                        **hll_backend.values)

    @property
    def layout(self) -> Layout:
        """Every file and folder of the storage folder."""
        return self.settings.layout

    @property
    def catalog(self) -> Catalog:
        """The batch plans (in ``<output>/.homeloc`` when ``storage_dir`` is empty)."""
        return Catalog(self.settings.storage_path)


class HllBackendResource(dg.ConfigurableResource):
    """The HLL engine: ``embedded`` (default) or ``postgres``.

    For PostgreSQL give ``pg_dsn`` (without a password) or host/port/db/user;
    the password is read only from the environment variable named by
    ``pg_password_env`` when connecting, never stored in config or shown.
    """

    backend: str = _field("backend")
    pg_dsn: str = _field("pg_dsn")
    pg_host: str = _field("pg_host")
    pg_port: int = _field("pg_port")
    pg_db: str = _field("pg_db")
    pg_user: str = _field("pg_user")
    pg_retries: int = _field("pg_retries")
    pg_password_env: str = Field(
        default=PASSWORD_ENV,
        description="Name of the variable the password is read from at connect time.")

    @property
    def values(self) -> dict[str, object]:
        """The ``backend`` settings of this resource."""
        return {name: getattr(self, name) for name in Settings().group("backend")}

    @property
    def pg_settings(self) -> PostgresSettings:
        """Connection settings for the PostgreSQL backend."""
        return PostgresSettings(
            dsn=self.pg_dsn or None,
            host=self.pg_host,
            port=self.pg_port,
            dbname=self.pg_db,
            user=self.pg_user,
            password_env=self.pg_password_env,
            retries=self.pg_retries,
        )

    @property
    def backend_pg(self) -> PostgresSettings | None:
        """:attr:`pg_settings` when the backend connects to PostgreSQL, else None."""
        return self.pg_settings if uses_postgres(self.backend) else None

    def make(self) -> HllBackend:
        """A fresh backend object."""
        return make_backend(self.backend, self.backend_pg)

    @classmethod
    def from_settings(cls, s: Settings, env_vars: bool = False,
                      env: dict[str, str] | None = None) -> HllBackendResource:
        """The resource for ``s``.

        With ``env_vars`` (the definitions ``workspace.yaml`` and ``dg`` load), a connection part set in the environment (``env``, default ``os.environ``) and
        not changed in ``s`` becomes a ``dg.EnvVar``: Dagster shows the variable's name
        and reads it when a run starts. The DSN stays a value, with any password cut
        out (an ``EnvVar`` would bring the password back into the resource).
        """
        env = os.environ if env is None else env
        values: dict[str, object] = s.group("backend")
        parts = ("pg_host", "pg_port", "pg_db", "pg_user", "pg_retries") if env_vars else ()
        for name in parts:
            var = option(name).env
            raw = env.get(var or "")
            if raw and str(values[name]) == raw:
                values[name] = dg.EnvVar.int(var) if isinstance(values[name], int) else dg.EnvVar(var)
        return cls(**values)

    @classmethod
    def from_env(cls, backend: str | None = None) -> HllBackendResource:
        """From ``HOMELOC_HLL_BACKEND`` and ``HOMELOC_PG_*`` (``backend`` overrides)."""
        return cls.from_settings(Settings.from_env().with_(backend=backend))
