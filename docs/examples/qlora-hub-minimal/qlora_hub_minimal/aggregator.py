"""An aggregator: a chunk codec plugged into the core's round machinery (hub.fed).

Rounds, signed files, checks and the merge maths come from
:class:`hub.fed.aggregator.RoundAggregator`; the codec decides what a chunk
is. This one keeps float32 chunks in the clear (like the built-in ``plain``),
so it is for tests and demonstrations only.
"""

from __future__ import annotations

import numpy as np

_DTYPE = np.dtype("<f4")


class Float32Codec:
    scheme = "float32_min"  # the name the aggregator is registered under
    encrypted = False

    def keygen(self, params):
        return b"example codec: no encryption\n", b""  # (public context, secret)

    def open(self, context, *, secret=False):
        return None

    def encrypt(self, ctx, values):
        return np.ascontiguousarray(values, dtype=_DTYPE).tobytes()

    def add(self, ctx, blobs, params):
        total = np.frombuffer(blobs[0], dtype=_DTYPE).astype(np.float64)
        for blob in blobs[1:]:
            total += np.frombuffer(blob, dtype=_DTYPE)
        return total.astype(_DTYPE).tobytes()

    def decrypt(self, ctx, blob, n, params):
        return np.frombuffer(blob, dtype=_DTYPE)[:n].astype(np.float64)


def make_aggregator():
    from hub.fed.aggregator import RoundAggregator

    return RoundAggregator("float32_min", "Example: unencrypted float32 sums", Float32Codec)
