"""`POST /v1/files` (streamed into the database, size-capped), `GET` and `DELETE /v1/files/{id}`."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request
from sqlalchemy import delete, or_, select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from app.api.deps import FileDep, SessionDep, SettingsDep, UserDep
from app.errors import Problem
from app.idempotency import commit_or_replay, remember, replay
from app.schemas import FileDeleted, FilePublic, problems
from app.uploads import HEAD_BYTES, refusal
from db.blobs import BlobTooLargeError, BlobWriter, delete_blob
from db.models import File, IdempotencyKey, Job

router = APIRouter(prefix="/v1/files", tags=["files"], responses=problems(401, 404, 422))
RAW_BODY = {  # the upload is the raw body, streamed, not a form: said for /docs
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def public(file: File) -> FilePublic:
    return FilePublic(
        id=file.id,
        filename=file.filename,
        purpose=file.purpose,
        size_bytes=file.size_bytes,
        sha256=file.sha256,
        created_at=file.created_at,
    )


@router.post(
    "",
    status_code=201,
    response_model=FilePublic,
    responses=problems(413, 415),
    openapi_extra=RAW_BODY,
)
async def upload(
    request: Request,
    session: SessionDep,
    user: UserDep,
    settings: SettingsDep,
    filename: Annotated[str, Query(min_length=1, max_length=255)],
    purpose: Annotated[Literal["checkpoint", "dataset"], Query()] = "checkpoint",
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> FilePublic:
    """Upload a file as the raw request body (`Content-Type: application/octet-stream`).

    The body streams into the database in chunks; past PQZ_MAX_UPLOAD_BYTES the upload is
    refused with 413 and nothing of it is kept. A file that no job could read, told by its
    first bytes (a checkpoint that is neither torch.save's zip format nor safetensors, a data
    set that is not an .npz), is refused with 422 and not kept either.
    """
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        # Stored as it came, a form would be its boundaries and fields, not the file.
        raise Problem(
            415,
            "Unsupported Media Type",
            f"the file came as a form ({media_type}): send it as the raw request body "
            "(curl --data-binary @FILE -H 'Content-Type: application/octet-stream')",
        )
    if idempotency_key and (existing := replay(session, user, idempotency_key, "files")):
        file = session.get(File, existing)
        if file is not None:
            return public(file)
    limit = settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Problem(
            413, "Content Too Large", f"the upload of {declared} bytes is over the limit of {limit}"
        )
    writer = await run_in_threadpool(
        BlobWriter, session, chunk_bytes=settings.chunk_bytes, max_bytes=limit
    )
    # The size is not known before the end: the declared one, or at most the limit.
    bound = int(declared) if declared is not None and declared.isdigit() else limit
    try:
        refused = await _receive(request, writer, purpose, bound, settings.chunk_bytes)
        if refused is None:
            blob = await run_in_threadpool(writer.close)
    except BlobTooLargeError:
        await run_in_threadpool(writer.abort)
        raise Problem(
            413, "Content Too Large", f"the upload is over the limit of {limit} bytes"
        ) from None
    except BaseException:
        await run_in_threadpool(writer.abort)
        raise
    if refused is not None:
        await run_in_threadpool(writer.abort)
        raise Problem(422, "Invalid Request", refused)
    file = File(
        user_id=user.id,
        filename=filename,
        purpose=purpose,
        blob_id=blob.id,
        size_bytes=blob.size_bytes,
        sha256=blob.sha256 or "",
    )
    session.add(file)
    session.flush()
    if idempotency_key:
        remember(session, user, idempotency_key, "files", file.id)
        blob_id = blob.id
        first = commit_or_replay(session, user, idempotency_key, "files")
        if first is not None:  # the key's first upload won: this copy is not kept
            await run_in_threadpool(delete_blob, session, blob_id)
            session.commit()
            earlier = session.get(File, first)
            if earlier is None:
                raise Problem(
                    409,
                    "Conflict",
                    f"Idempotency-Key '{idempotency_key}' was used for file '{first}', which "
                    "has been deleted; use a new key for a new upload",
                )
            return public(earlier)
    session.commit()
    return public(file)


async def _receive(
    request: Request, writer: BlobWriter, purpose: str, bound: int, chunk_bytes: int
) -> str | None:
    """Stream the body into `writer`; or, once its first bytes show that no job could read it,
    read the rest without keeping it and return why (`app.uploads.refusal`)."""
    pending, head, size = bytearray(), b"", 0
    refused: str | None = None
    async for piece in request.stream():
        size += len(piece)
        if refused is not None:
            if size > bound:
                break  # past the limit: the rest is not worth reading to refuse it
            continue  # read and dropped, so that the client gets the answer whole
        if len(head) < HEAD_BYTES:
            head += piece[: HEAD_BYTES - len(head)]
            if len(head) == HEAD_BYTES and (refused := refusal(purpose, head, bound)):
                continue
        pending += piece
        if len(pending) >= chunk_bytes:
            await run_in_threadpool(writer.write, pending)  # copied into the writer's buffer
            pending.clear()
    if refused is None and (refused := refusal(purpose, head, size)) is None:
        await run_in_threadpool(writer.write, pending)
    return refused


@router.get("/{file_id}", response_model=FilePublic)
async def get_file(file: FileDep) -> FilePublic:
    return public(file)  # no I/O: valid_file loaded it


@router.delete("/{file_id}", response_model=FileDeleted, responses=problems(409))
def delete_file(file: FileDep, session: SessionDep) -> FileDeleted:
    """Delete an upload and its bytes. Refused (409) while a job refers to it: a job's
    checkpoint and data stay for as long as the job does (re-runs read them)."""
    job_id = session.execute(
        select(Job.id)
        .where(or_(Job.checkpoint_file_id == file.id, Job.data_file_id == file.id))
        .limit(1)
    ).scalar()
    if job_id is not None:
        raise Problem(409, "Conflict", f"file '{file.id}' is used by job '{job_id}'")
    # A replayed Idempotency-Key must not point at a file that is gone (nor block a new upload).
    session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.path == "files", IdempotencyKey.resource_id == file.id
        )
    )
    session.delete(file)
    try:
        session.flush()  # the file row before its blob: it refers to the blob
        delete_blob(session, file.blob_id)
        session.commit()
    except IntegrityError:  # a job created meanwhile refers to it
        session.rollback()
        raise Problem(409, "Conflict", f"file '{file.id}' is used by a job") from None
    return FileDeleted(id=file.id)
