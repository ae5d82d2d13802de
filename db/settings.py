"""Settings of the service, from `PQZ_*` environment variables (pydantic-settings).

The embedded default needs none: SQLite and a filesystem broker under `PQZ_HOME` (./var).
Production sets `PQZ_DATABASE_URL` (PostgreSQL) and `PQZ_BROKER_URL` (Redis).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PQZ_", extra="ignore")

    home: Path = Field(Path("var"), description="Where the embedded default keeps its files.")
    database_url: str | None = Field(None, description="Default: sqlite:///$PQZ_HOME/pqz.db")
    broker_url: str | None = Field(
        None, description="Default: filesystem:// under $PQZ_HOME/broker"
    )
    max_upload_bytes: int = Field(2 << 30, description="Uploads larger than this get 413.")
    chunk_bytes: int = Field(4 << 20, description="Size of the database rows a file is cut into.")
    job_time_limit_s: int = Field(6 * 3600, description="Hard limit of one job attempt.")
    heartbeat_interval_s: float = Field(5.0, description="How often a running job reports.")
    heartbeat_timeout_s: float = Field(60.0, description="A running job silent this long is lost.")
    reap_interval_s: float = Field(
        10.0, description="How often lost and unpublished jobs are handled."
    )
    max_attempts: int = Field(2, description="Attempts of a job whose worker vanished.")
    intake_memory_bytes: int = Field(
        8 << 30, description="Address-space limit of checkpoint intake."
    )
    intake_timeout_s: float = Field(300.0, description="Time limit of checkpoint intake.")
    data_dir: Path | None = Field(None, description="Built-in data sets (PQZ_DATA_DIR).")
    allow_download: bool = Field(False, description="Let workers download built-in data sets.")

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'pqz.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def uses_filesystem_broker(self) -> bool:
        return self.resolved_broker_url.startswith("filesystem://")

    def broker_transport_options(self) -> dict[str, Any]:
        if not self.uses_filesystem_broker:
            # Redis redelivers unacknowledged tasks after this; it must outlast the longest job.
            return {"visibility_timeout": self.job_time_limit_s + 3600}
        folder = (self.home / "broker").resolve()
        for name in ("queue", "processed", "control"):
            (folder / name).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),  # kombu's default is ./control
            "store_processed": False,
            "polling_interval": 0.1,  # kombu's default of 1 s would add up to a second per job
        }


@functools.cache
def get_settings() -> Settings:
    return Settings()
