"""The plaintext reference codec: the same chunking and round files as ``ckks``, no encryption.

A chunk is the float64 little-endian bytes of the values. Summing in float64
makes ``plain`` the exact reference the ``ckks`` aggregator is checked
against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hub.fed.params import CkksParams

_DTYPE = np.dtype("<f8")


class PlainCodec:
    """Chunk codec for the ``plain`` aggregator: float64 bytes, no keys."""

    scheme = "plain"
    encrypted = False

    def keygen(self, params: CkksParams) -> tuple[bytes, bytes]:
        """No keys: the public 'context' is a fixed marker, the secret is empty."""
        return b"qlora-hub plain aggregation: no encryption\n", b""

    def open(self, context: bytes, *, secret: bool = False) -> Any:
        """Nothing to load; returns ``None``."""
        return None

    def encrypt(self, ctx: Any, values: np.ndarray) -> bytes:
        """The values as float64 bytes."""
        return np.ascontiguousarray(values, dtype=_DTYPE).tobytes()

    def add(self, ctx: Any, blobs: Sequence[bytes], params: CkksParams) -> bytes:
        """Sum of the chunks in float64 (fresh array; inputs untouched)."""
        acc = np.frombuffer(blobs[0], dtype=_DTYPE).copy()
        for blob in blobs[1:]:
            acc += np.frombuffer(blob, dtype=_DTYPE)
        return acc.tobytes()

    def decrypt(self, ctx: Any, blob: bytes, n: int, params: CkksParams) -> np.ndarray:
        """The first ``n`` values of a chunk."""
        return np.frombuffer(blob, dtype=_DTYPE)[:n].copy()
