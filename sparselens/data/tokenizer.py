"""Byte-level tokenizer: a token is one byte of the UTF-8 encoding, so the vocabulary is exactly 256."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

VOCAB_SIZE = 256  # one token per byte value; no special tokens


def encode(text: str) -> np.ndarray:
    """Encode text as its UTF-8 bytes.

    Returns:
        ids: uint8 [N], N = number of UTF-8 bytes of `text`.
    """
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()


def decode(ids: np.ndarray | Sequence[int]) -> str:
    """Decode byte ids back to text; byte sequences that are not valid UTF-8 become U+FFFD.

    Args:
        ids: integer ids [N] in [0, 256) (numpy array, list, or a CPU torch tensor).
    """
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"decode expects a 1-D sequence of ids, got shape {arr.shape}; decode rows one at a time")
    if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() >= VOCAB_SIZE):
        raise ValueError(
            f"ids must be integers in [0, {VOCAB_SIZE}); got dtype {arr.dtype}, range [{arr.min()}, {arr.max()}]"
        )
    return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")
