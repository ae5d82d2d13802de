"""What the API reads and writes (OpenAI's fine-tuning jobs are the shape users know)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from app.spec import JobSpec, KnownFields


class FilePublic(BaseModel):
    id: str
    object: str = "file"
    filename: str
    purpose: str
    size_bytes: int
    sha256: str
    created_at: datetime


class JobCreate(KnownFields):
    checkpoint_file: str = Field(description="Id of an uploaded checkpoint (purpose 'checkpoint').")
    data_file: str | None = Field(None, description="Id of an uploaded .npz (purpose 'dataset').")
    spec: JobSpec


class FileDeleted(BaseModel):
    id: str
    object: str = "file"
    deleted: bool = True


class JobError(BaseModel):
    code: str
    message: str


class JobPublic(BaseModel):
    id: str
    object: str = "job"
    status: str
    stage: str | None
    progress: float
    error: JobError | None
    metrics: dict[str, Any] | None
    spec: dict[str, Any]
    checkpoint_file: str
    data_file: str | None
    attempts: int
    artifact: str | None = Field(description="Download path of the .pqz once the job succeeded.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobList(BaseModel):
    object: str = "list"
    data: list[JobPublic]
    has_more: bool


class EventPublic(BaseModel):
    id: int
    created_at: datetime
    level: str
    stage: str | None
    progress: float | None
    message: str


class EventList(BaseModel):
    object: str = "list"
    data: list[EventPublic]
    has_more: bool
