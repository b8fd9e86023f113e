"""Dagster resources: the run settings and the HLL backend (embedded or PostgreSQL)."""

from __future__ import annotations

from dataclasses import fields

import dagster as dg
from pydantic import Field

from homeloc_assets.backends import HllBackend, PostgresSettings, make_backend
from homeloc_assets.catalog import Catalog
from homeloc_assets.settings import Settings


class HomelocConfig(dg.ConfigurableResource):
    """Where data lives and how it is judged (see README, "Configuration")."""

    input_dir: str = Field(description="Folder watched for userdays CSVs (HOMELOC_INPUT_DIR).")
    output_dir: str = Field(description="Where the exports go (HOMELOC_OUTPUT_DIR).")
    storage_dir: str = Field(description="Partition files and batch plans.")
    study_country: str = Field(default="Germany", description="Name or ISO alpha-3 code.")
    min_userdays: float = Field(default=0.0, description="Below: undetermined.")
    min_share: float = Field(default=0.0, description="Home share below: undetermined.")
    min_margin: float = Field(default=0.0, description="Margin to the runner-up below: undetermined.")
    layers: str = Field(default="", description="Extra region layers NAME=SPEC;... (HOMELOC_LAYERS).")
    study_region: str = Field(default="", description="LAYER=CODE inside the study country.")
    batch_users: int = Field(default=50_000, description="Users per batch partition.")
    workers: int = Field(default=0, description="Worker processes (0 = one per core).")
    max_reject_share: float = Field(default=0.01, description="Fail above this share of rejected rows.")
    max_no_country_share: float = Field(
        default=0.2, description="Fail above this share of points in no country "
                                 "(HOMELOC_MAX_NO_COUNTRY_SHARE).")
    countries_path: str = Field(default="", description="Own countries file (default: Natural Earth).")
    countries_name_column: str = "ADMIN"
    countries_code_column: str = "ISO_A3_EH"
    cell_resolution: int = Field(default=8, description="H3 resolution of the landscape cells.")
    cell_ring: int = Field(default=1, description="Neighbour rings pooled per cell (k).")
    landscape_min_observations: int = Field(default=30, description="Fewer: too little data.")
    landscape_min_difference: float = Field(default=0.10, description="Share difference needed.")
    landscape_max_q: float = Field(default=0.05, description="Benjamini-Yekutieli q limit.")
    landscape: bool = Field(default=True, description=(
        "Batch workers also compute each batch's landscape tables (off: --no-landscape)."))
    dask_scheduler: str = Field(
        default="",
        description="Dask scheduler for the batches, tcp://host:8786 or a scheduler .json file "
                    "(HOMELOC_DASK_SCHEDULER); empty: a local process pool.",
    )

    @classmethod
    def from_settings(cls, s: Settings) -> HomelocConfig:
        """The resource for ``s`` (storage resolved to its default if unset)."""
        values = {f.name: getattr(s, f.name) for f in fields(Settings) if f.name in cls.model_fields}
        values["storage_dir"] = str(s.storage_path)
        return cls(**values)

    @property
    def settings(self) -> Settings:
        """As a plain ``Settings``."""
        return Settings(**{f.name: getattr(self, f.name) for f in fields(Settings)
                           if f.name in type(self).model_fields})

    @property
    def catalog(self) -> Catalog:
        """The batch plans."""
        return Catalog(self.storage_dir)


class HllBackendResource(dg.ConfigurableResource):
    """The HLL engine: ``embedded`` (default) or ``postgres``.

    For PostgreSQL give ``pg_dsn`` (without a password) or host/port/db/user;
    the password is read only from the environment variable named by
    ``pg_password_env`` when connecting, never stored in config or shown.
    """

    backend: str = Field(default="embedded", description="embedded | postgres")
    pg_dsn: str = Field(default="", description="libpq DSN without password (HOMELOC_PG_DSN).")
    pg_host: str = "127.0.0.1"
    pg_port: int = 5432
    pg_db: str = "postgres"
    pg_user: str = "postgres"
    pg_password_env: str = "HOMELOC_PG_PASSWORD"
    pg_retries: int = 5

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

    def make(self) -> HllBackend:
        """A fresh backend object."""
        return make_backend(self.backend, self.pg_settings if self.backend == "postgres" else None)

    @classmethod
    def from_env(cls, backend: str | None = None) -> HllBackendResource:
        """From ``HOMELOC_HLL_BACKEND`` and ``HOMELOC_PG_*``."""
        pg = PostgresSettings.from_env()
        import os

        return cls(
            backend=backend or os.environ.get("HOMELOC_HLL_BACKEND", "embedded") or "embedded",
            pg_dsn=pg.dsn or "",
            pg_host=pg.host,
            pg_port=pg.port,
            pg_db=pg.dbname,
            pg_user=pg.user,
            pg_retries=pg.retries,
        )
