"""Bit-level layouts of the `.pqz` sections: packed codes and the two mask encodings.

Every decoder here takes the expected element count from the validated manifest and rejects
input that does not decode to exactly that many elements.
"""

from __future__ import annotations

import numpy as np

from compression.errors import CorruptArtifactError


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Codes (n,) in [0, 2**bits) as a big-endian bit stream of n * bits bits."""
    if bits == 8:
        return codes.astype(np.uint8).tobytes()
    as_bits = np.unpackbits(codes.astype(np.uint8)[:, None], axis=1)[:, 8 - bits :]  # (n, bits)
    return np.packbits(as_bits.reshape(-1)).tobytes()


def unpack_codes(data: bytes, bits: int, n: int) -> np.ndarray:
    if len(data) != packed_size(n, bits):
        raise CorruptArtifactError(
            f"code section holds {len(data)} bytes, expected {packed_size(n, bits)}"
        )
    raw = np.frombuffer(data, dtype=np.uint8)
    if bits == 8:
        return raw.astype(np.int64)
    as_bits = np.unpackbits(raw)[: n * bits].reshape(n, bits)  # (n, bits)
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.int64)  # (bits,)
    return as_bits.astype(np.int64) @ weights


def packed_size(n: int, bits: int) -> int:
    return (n * bits + 7) // 8


def encode_bitmap(mask: np.ndarray) -> bytes:
    """One bit per weight, 1 = kept."""
    return np.packbits(mask.astype(np.uint8)).tobytes()


def decode_bitmap(data: bytes, numel: int) -> np.ndarray:
    if len(data) != (numel + 7) // 8:
        raise CorruptArtifactError(f"mask bitmap holds {len(data)} bytes for {numel} weights")
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:numel].astype(bool)


def encode_gaps(mask: np.ndarray) -> bytes:
    """Distances between kept weights (Deep Compression's relative indices), one byte each.

    A distance g >= 1 is written as g - 1 in base-255 runs: as many 255 bytes as fit, then the
    remainder, so very sparse layers cost about one byte per kept weight.
    """
    positions = np.flatnonzero(mask)
    gaps = np.diff(positions, prepend=-1) - 1  # (n_kept,), each >= 0
    fill = gaps // 255
    lengths = fill + 1
    out = np.full(int(lengths.sum()), 255, dtype=np.uint8)
    out[np.cumsum(lengths) - 1] = (gaps % 255).astype(np.uint8)
    return out.tobytes()


def decode_gaps(data: bytes, numel: int, n_kept: int) -> np.ndarray:
    raw = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(raw != 255)
    if ends.size != n_kept or (raw.size and raw[-1] == 255):
        raise CorruptArtifactError(f"mask gaps encode {ends.size} kept weights, expected {n_kept}")
    totals = np.cumsum(raw, dtype=np.int64)[ends] if ends.size else np.zeros(0, np.int64)
    gaps = np.diff(totals, prepend=0) + 1
    positions = np.cumsum(gaps) - 1
    if positions.size and positions[-1] >= numel:
        raise CorruptArtifactError(f"mask gaps point past the tensor's {numel} weights")
    mask = np.zeros(numel, dtype=bool)
    mask[positions] = True
    return mask
