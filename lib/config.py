"""Process-level settings, read from ``LABPIPE_*`` environment variables.

What users edit in the Prefect UI lives in blocks (``labpipe.blocks``); this is
what a process needs before it can reach a block: where its home is, which
database and Prefect server to talk to. Everything defaults under
``$LABPIPE_HOME`` (``./.labpipe``), so a fresh checkout runs with no setup.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """labpipe's process settings; every field is ``LABPIPE_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="LABPIPE_", extra="ignore")

    home: Path = Field(Path(".labpipe"), description="Folder holding all local state and data roots.")
    database_url: SecretStr | None = Field(
        None,
        description="postgresql://user:pass@host:port/db or mysql://user:pass@host:port; "
        "unset starts the embedded PostgreSQL in $LABPIPE_HOME/pg.",
    )
    schema_prefix: str = Field("labpipe", description="Prefix of every DataJoint schema labpipe declares.")
    prefect_host: str = Field("127.0.0.1", description="Address the local Prefect server binds to.")
    prefect_port: int = Field(4200, description="Port of the local Prefect server.")
    prefect_api_url: str | None = Field(None, description="Use this Prefect API instead of starting a server.")
    prefect_database_url: SecretStr | None = Field(
        None, description="Database of the Prefect server (sqlite+aiosqlite:// or postgresql+asyncpg://)."
    )
    dask_address: str | None = Field(None, description="tcp://host:8786 of a Dask scheduler; unset: LocalCluster.")
    gpus: int | None = Field(None, description="GPUs on this host; unset: counted with nvidia-smi.")
    lab_gpus: int | None = Field(
        None,
        description="GPUs across the lab's GPU hosts: the `gpu` concurrency limit `labpipe up` sets (a main server "
        "without GPUs sets it); unset: LABPIPE_GPUS, else this host's count.",
    )
    timezone: str | None = Field(
        None, description="IANA time zone of the lab's cron schedules (Europe/Berlin); unset: this host's."
    )
    lifecycles: str | None = Field(
        None,
        description="Comma-separated lifecycles `labpipe up` deploys (ingest,radio,segmentation,training,pose,"
        "backup,vms); unset: all of deployments/prefect.yaml.",
    )

    @field_validator("home")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"LABPIPE_TIMEZONE={value!r} is not an IANA time zone (e.g. Europe/Berlin)") from exc
        return value or None

    @property
    def lifecycle_list(self) -> list[str] | None:
        """The lifecycles to deploy, or None for all."""
        names = [n.strip() for n in (self.lifecycles or "").split(",") if n.strip()]
        return names or None

    @property
    def api_url(self) -> str:
        return self.prefect_api_url or f"http://{self.prefect_host}:{self.prefect_port}/api"


@lru_cache(maxsize=1)
def _cached(environ_key: tuple[tuple[str, str], ...]) -> Settings:
    return Settings()


def get_settings() -> Settings:
    """Settings for the current environment (re-read when LABPIPE_* variables change)."""
    key = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("LABPIPE_")))
    return _cached(key)
