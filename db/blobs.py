"""Files in the database as rows of fixed-size chunks, written and read as streams.

No process holds a whole file in memory, and PostgreSQL's 1 GB field limit never applies.
Every blob records its size and SHA-256; a reader verifies the hash as it goes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from db.models import Blob, BlobChunk


class BlobTooLargeError(Exception):
    """The stream went past the size limit; nothing of it is kept."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} bytes")
        self.limit = limit


class BlobCorruptError(Exception):
    """A stored blob no longer matches its SHA-256 or size."""


class BlobWriter:
    """Writes one blob chunk by chunk; each full chunk is inserted and committed at once, so a
    long upload never holds a write lock (SQLite) or a growing transaction. `abort` removes
    every row written so far."""

    def __init__(self, session: Session, *, chunk_bytes: int, max_bytes: int | None = None) -> None:
        self.session, self.chunk_bytes, self.max_bytes = session, chunk_bytes, max_bytes
        self.blob = Blob()
        session.add(self.blob)
        session.commit()
        self.digest = hashlib.sha256()
        self.buffer = bytearray()
        self.size = 0
        self.index = 0

    def write(self, piece: bytes | bytearray) -> None:
        self.size += len(piece)
        if self.max_bytes is not None and self.size > self.max_bytes:
            raise BlobTooLargeError(self.max_bytes)
        self.digest.update(piece)
        self.buffer += piece
        while len(self.buffer) >= self.chunk_bytes:
            with memoryview(self.buffer) as view:
                chunk = bytes(view[: self.chunk_bytes])  # the one copy the database needs
            self._flush(chunk)
            del chunk
            del self.buffer[: self.chunk_bytes]

    def close(self) -> Blob:
        if self.buffer or self.index == 0:
            self._flush(bytes(self.buffer))
            self.buffer.clear()
        self.blob.size_bytes = self.size
        self.blob.sha256 = self.digest.hexdigest()
        self.blob.complete = True
        self.session.commit()
        return self.blob

    def abort(self) -> None:
        self.session.rollback()
        delete_blob(self.session, self.blob.id)
        self.session.commit()

    def _flush(self, data: bytes) -> None:
        _insert_chunk(self.session, self.blob.id, self.index, data)
        self.session.commit()
        self.index += 1


def write_blob(
    session: Session, stream: Iterable[bytes], *, chunk_bytes: int, max_bytes: int | None = None
) -> Blob:
    """Store a whole stream (committing as it goes); on any error nothing of it is kept."""
    writer = BlobWriter(session, chunk_bytes=chunk_bytes, max_bytes=max_bytes)
    try:
        for piece in stream:
            writer.write(piece)
        return writer.close()
    except BaseException:
        writer.abort()
        raise


def _insert_chunk(session: Session, blob_id: str, index: int, data: bytes) -> None:
    # A Core insert: no ORM object stays in the session holding the chunk's bytes.
    session.execute(insert(BlobChunk).values(blob_id=blob_id, index=index, data=data))


def read_blob(session: Session, blob_id: str) -> Iterator[bytes]:
    """The blob's bytes chunk by chunk, its SHA-256 and size checked at the end."""
    blob = session.get(Blob, blob_id)
    if blob is None or not blob.complete:
        raise BlobCorruptError(f"blob {blob_id} is missing or incomplete")
    digest = hashlib.sha256()
    size = 0
    index = 0
    while True:
        data = session.execute(
            select(BlobChunk.data).where(BlobChunk.blob_id == blob_id, BlobChunk.index == index)
        ).scalar_one_or_none()
        if data is None:
            break
        digest.update(data)
        size += len(data)
        index += 1
        yield data
    if size != blob.size_bytes or digest.hexdigest() != blob.sha256:
        raise BlobCorruptError(f"blob {blob_id} does not match its recorded size and SHA-256")


def delete_blob(session: Session, blob_id: str) -> None:
    session.execute(delete(BlobChunk).where(BlobChunk.blob_id == blob_id))
    session.execute(delete(Blob).where(Blob.id == blob_id))
