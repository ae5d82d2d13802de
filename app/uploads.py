"""An upload's kind, told from its first bytes, so that a file no job could read is refused at
once instead of failing a job after its wait in the queue. Nothing is parsed: the worker still
reads every checkpoint and data set with its own checks (compression/checkpoint.py)."""

from __future__ import annotations

import struct

HEAD_BYTES = 16  # enough for every signature below
ZIP = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty archive
WHAT_TO_UPLOAD = {
    "checkpoint": "upload a state dict saved with torch.save(model.state_dict(), path) or a "
    ".safetensors file",
    "dataset": "upload an .npz file (numpy.savez) with x_train, y_train, x_test and y_test",
}


def refusal(purpose: str, head: bytes, size: int, name: str | None = None) -> str | None:
    """Why no job could read an upload that starts with `head` and has `size` bytes, or None;
    `name` is what the message calls it (`pqz submit` checks a file before uploading it).
    An empty file passes here: a job refuses it when it names the file."""
    if size == 0 or head.startswith(ZIP):
        return None
    if purpose == "checkpoint" and _safetensors(head, size):
        return None
    if purpose == "checkpoint" and head[:1] == b"\x80":
        what = "is in the legacy (non-zip) torch.save format or a bare pickle, never unpickled"
    elif purpose == "dataset" and head.startswith(b"\x93NUMPY"):
        what = "is a single .npy array, not an .npz archive"
    else:
        kind = "a PyTorch checkpoint or safetensors file" if purpose == "checkpoint" else "an .npz"
        what = f"is not {kind} (it starts with bytes {head[:8].hex(' ')})"
    return f"{name or f'the {purpose} upload'} {what}; {WHAT_TO_UPLOAD[purpose]}"


def _safetensors(head: bytes, size: int) -> bool:
    """A little-endian u64 header length that fits the file, then the header's JSON object."""
    if len(head) < 9:
        return False
    (header_bytes,) = struct.unpack_from("<Q", head)
    return 2 <= header_bytes <= size - 8 and head[8:9] == b"{"
