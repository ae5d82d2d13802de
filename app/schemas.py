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


class FieldError(BaseModel):
    field: str = Field(description="Where the bad value is, e.g. spec.prune.max_accuracy_drop.")
    message: str


class ProblemDetail(BaseModel):
    """Every error answer (RFC 9457, `application/problem+json`)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str = Field(description="What went wrong, quoting the bad value.")
    instance: str = Field(description="The request's path.")
    errors: list[FieldError] | None = Field(None, description="Every invalid field (422).")


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses, as problem+json (FastAPI would otherwise
    document its own 422 shape, which this API never sends)."""
    described = {
        401: "No API key, or a wrong one.",
        404: "No such resource, or another user's.",
        409: "The resource is in a state that forbids it.",
        413: "The upload is over PQZ_MAX_UPLOAD_BYTES; nothing of it is kept.",
        415: "The file came as a form: send it as the raw request body.",
        422: "Invalid request: every bad field is in `errors`.",
        503: "The database or the broker cannot be reached.",
    }
    return {
        status: {
            "model": ProblemDetail,
            "description": described[status],
            # FastAPI files `model` under application/json too; the schema is the same.
            "content": {
                "application/problem+json": {
                    "schema": {"$ref": "#/components/schemas/ProblemDetail"}
                }
            },
        }
        for status in statuses
    }
