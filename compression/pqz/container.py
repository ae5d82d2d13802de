"""The `.pqz` container: header, manifest, sections and checksum.

Layout (little-endian), version FORMAT_VERSION:

    header    24 bytes  magic, version u16, flags u16, manifest size u32, raw size u32, CRC32 u32
    manifest            zstandard-compressed JSON: architecture, spec, metrics, tensors, sections
    sections            zstandard frames, back to back, each with its size, raw size and CRC32
    checksum  32 bytes  SHA-256 of everything before it

No pickle anywhere. A reader checks every size against the file and the manifest before it
allocates, so a hostile or damaged file costs at most what its validated manifest declares.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from compression.errors import CorruptArtifactError

FORMAT_VERSION = 1
MAGIC = b"\x89PQZ\r\n\x1a\n"
HEADER = struct.Struct("<8sHHIII")
CHECKSUM_BYTES = 32
MAX_MANIFEST_BYTES = 64 << 20
MAX_FILE_BYTES = 16 << 30
SECTION_KINDS = ("values", "codebook", "codes", "mask")


@dataclass(frozen=True, slots=True)
class Section:
    """One entropy-coded block: where it lies after the manifest, and how it decodes."""

    offset: int
    size: int
    raw_size: int
    crc32: int


@dataclass(frozen=True, slots=True)
class PqzContainer:
    """A checked `.pqz` file in memory: its manifest and its still-compressed sections."""

    manifest: dict[str, Any]
    sections: tuple[Section, ...]
    data: bytes
    data_start: int
    checksum_ok: bool

    @property
    def file_size(self) -> int:
        return len(self.data)

    def section_bytes(self, index: int) -> bytes:
        """The decompressed bytes of section `index`, after its CRC32 and size are checked."""
        if not 0 <= index < len(self.sections):
            raise CorruptArtifactError(f"section index {index} is out of range")
        section = self.sections[index]
        start = self.data_start + section.offset
        frame = self.data[start : start + section.size]
        if zlib.crc32(frame) != section.crc32:
            raise CorruptArtifactError(f"section {index} fails its CRC32 check")
        return _decompress(frame, section.raw_size, f"section {index}")

    def size_breakdown(self) -> dict[str, int]:
        """Bytes by role; the values sum to the file size."""
        breakdown = {
            "header": HEADER.size,
            "manifest": self.data_start - HEADER.size,
            **dict.fromkeys(SECTION_KINDS, 0),
            "checksum": CHECKSUM_BYTES,
        }
        for entry in self.manifest["tensors"]:
            for kind, index in entry["sections"].items():
                breakdown[kind] += self.sections[index].size
        return breakdown


class SectionWriter:
    """Collects compressed sections for a manifest that refers to them by index."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.table: list[dict[str, int]] = []
        self.offset = 0

    def add(self, raw: bytes) -> int:
        frame = compress(raw)
        self.frames.append(frame)
        self.table.append(
            {
                "offset": self.offset,
                "size": len(frame),
                "raw_size": len(raw),
                "crc32": zlib.crc32(frame),
            }
        )
        self.offset += len(frame)
        return len(self.frames) - 1


def compress(raw: bytes) -> bytes:
    level = 19 if len(raw) <= (4 << 20) else 9  # the best ratio where it stays fast
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(raw)


def write_container(
    path: str | os.PathLike[str], manifest: Mapping[str, Any], sections: SectionWriter
) -> int:
    """Write atomically (temporary file, then rename) and return the file size."""
    body = json.dumps({**manifest, "sections": sections.table}, separators=(",", ":")).encode()
    manifest_frame = compress(body)
    header = HEADER.pack(
        MAGIC, FORMAT_VERSION, 0, len(manifest_frame), len(body), zlib.crc32(manifest_frame)
    )
    digest = hashlib.sha256()
    with atomic_path(path) as temporary, temporary.open("wb") as handle:
        for chunk in (header, manifest_frame, *sections.frames):
            digest.update(chunk)
            handle.write(chunk)
        handle.write(digest.digest())
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path).stat().st_size


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside `path` that replaces it on success and vanishes on failure, so
    no reader ever sees a half-written file."""
    target = Path(path)
    if not target.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, "output directory does not exist", str(target.parent))
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "Is a directory", str(target))
    # Errors name the user's path, not our temporary one (here: a directory that takes no new
    # files, such as /proc).
    try:
        handle, name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".part"
        )
    except OSError as error:
        raise type(error)(error.errno, error.strerror, str(target)) from None
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        umask = os.umask(0)
        os.umask(umask)
        temporary.chmod(0o666 & ~umask)  # mkstemp's 0600 would surprise a team sharing files
        os.replace(temporary, target)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        if error.filename == str(temporary):
            raise type(error)(error.errno, error.strerror, str(target)) from None
        raise
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def read_container(path: str | os.PathLike[str], *, verify: bool = True) -> PqzContainer:
    """Read and structurally validate a `.pqz` file; `verify=False` reports a bad checksum instead
    of raising (for `pqz inspect`), but structure is always checked."""
    file_path = Path(path)
    # A missing or unreadable file is the OSError a caller expects (FileNotFoundError, ...).
    size = file_path.stat().st_size
    if file_path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "Is a directory", str(file_path))
    if size > MAX_FILE_BYTES:
        raise CorruptArtifactError(f"{file_path} is {size} bytes, more than a .pqz may hold")
    try:
        return parse_container(file_path.read_bytes(), verify=verify)
    except CorruptArtifactError as error:  # which file, for a user holding several
        raise CorruptArtifactError(f"{file_path}: {error}") from None


def parse_container(data: bytes, *, verify: bool = True) -> PqzContainer:
    if len(data) < HEADER.size + CHECKSUM_BYTES:
        if not data.startswith(MAGIC[: len(data)]) or len(data) < len(MAGIC):
            raise CorruptArtifactError("not a .pqz file (wrong magic bytes)")
        raise CorruptArtifactError(f"truncated .pqz file: {len(data)} bytes")
    magic, version, _flags, manifest_size, manifest_raw, manifest_crc = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CorruptArtifactError("not a .pqz file (wrong magic bytes)")
    if version != FORMAT_VERSION:
        raise CorruptArtifactError(
            f".pqz format version {version} is not supported "
            f"(this pqz reads version {FORMAT_VERSION})"
        )
    checksum_ok = hashlib.sha256(data[:-CHECKSUM_BYTES]).digest() == data[-CHECKSUM_BYTES:]
    if verify and not checksum_ok:
        raise CorruptArtifactError("SHA-256 mismatch: the file is truncated or corrupt")
    data_start = HEADER.size + manifest_size
    if data_start > len(data) - CHECKSUM_BYTES or manifest_raw > MAX_MANIFEST_BYTES:
        raise CorruptArtifactError(
            f"manifest of {manifest_size} bytes ({manifest_raw} raw) does not fit the file"
        )
    frame = data[HEADER.size : data_start]
    if zlib.crc32(frame) != manifest_crc:
        raise CorruptArtifactError("manifest fails its CRC32 check")
    try:
        manifest = json.loads(_decompress(frame, manifest_raw, "manifest"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptArtifactError(f"manifest is not valid JSON: {error}") from None
    if not isinstance(manifest, dict):
        raise CorruptArtifactError("manifest is not a JSON object")
    sections = _check_sections(manifest.get("sections"), len(data) - CHECKSUM_BYTES - data_start)
    return PqzContainer(manifest, sections, data, data_start, checksum_ok)


def _check_sections(table: object, available: int) -> tuple[Section, ...]:
    """Sections must tile the space between manifest and checksum exactly, in order."""
    if not isinstance(table, list):
        raise CorruptArtifactError("manifest has no section table")
    sections = []
    offset = 0
    for index, item in enumerate(table):
        if not isinstance(item, dict) or set(item) != {"offset", "size", "raw_size", "crc32"}:
            raise CorruptArtifactError(f"section {index} is malformed")
        values = [item["offset"], item["size"], item["raw_size"], item["crc32"]]
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
            raise CorruptArtifactError(f"section {index} has a field that is not a size")
        if item["offset"] != offset or item["raw_size"] > MAX_FILE_BYTES:
            raise CorruptArtifactError(
                f"section {index} is out of place or declares an absurd size"
            )
        sections.append(Section(item["offset"], item["size"], item["raw_size"], item["crc32"]))
        offset += item["size"]
    if offset != available:
        raise CorruptArtifactError(
            f"sections cover {offset} bytes but the file has {available} "
            "between manifest and checksum"
        )
    return tuple(sections)


def _decompress(frame: bytes, raw_size: int, what: str) -> bytes:
    """Decompress one frame whose declared content size must equal the validated `raw_size`."""
    try:
        declared = zstandard.frame_content_size(frame)
    except zstandard.ZstdError:
        raise CorruptArtifactError(f"{what} is not a zstandard frame") from None
    if declared != raw_size:
        raise CorruptArtifactError(f"{what} declares {declared} bytes, expected {raw_size}")
    try:
        raw: bytes = zstandard.ZstdDecompressor().decompress(frame, max_output_size=raw_size)
    except zstandard.ZstdError as error:
        raise CorruptArtifactError(f"{what} does not decompress: {error}") from None
    if len(raw) != raw_size:
        raise CorruptArtifactError(f"{what} decompressed to {len(raw)} bytes, expected {raw_size}")
    return raw
