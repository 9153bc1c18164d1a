"""The TenSEAL side of a round: contexts, encrypting, summing and decrypting one chunk.

A chunk is at most ``slots`` (N/2) values and becomes one CKKS ciphertext.
Everything crosses this module as bytes from TenSEAL's own ``serialize()``
(protobuf), never pickle. ``tenseal`` is imported here only, lazily, so the
plugin module stays light.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from hub.errors import AccessError, ValidationError
from hub.fed.params import CkksParams


def _ts() -> Any:
    import tenseal

    return tenseal


class CkksCodec:
    """Chunk codec for the ``ckks`` aggregator (TenSEAL CKKS).

    Args:
        threads: TenSEAL worker threads for the context (0: one per CPU core).
    """

    scheme = "ckks"
    encrypted = True

    def __init__(self, threads: int = 0) -> None:
        self.threads = threads or os.cpu_count() or 1

    def keygen(self, params: CkksParams) -> tuple[bytes, bytes]:
        """Fresh keys: ``(public context bytes, secret context bytes)``.

        The public context carries the public encryption key only: no secret
        key, and no relinearisation or Galois keys since aggregation only adds.
        """
        ts = _ts()
        ctx = ts.context(
            ts.SCHEME_TYPE.CKKS,
            params.poly_modulus_degree,
            coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
            n_threads=self.threads,
        )
        ctx.global_scale = 2.0**params.global_scale_bits
        public = ctx.serialize(
            save_public_key=True,
            save_secret_key=False,
            save_galois_keys=False,
            save_relin_keys=False,
        )
        secret = ctx.serialize(
            save_public_key=True,
            save_secret_key=True,
            save_galois_keys=False,
            save_relin_keys=False,
        )
        return public, secret

    def open(self, context: bytes, *, secret: bool = False) -> Any:
        """Load a serialized context; with ``secret=True`` it must hold the secret key."""
        ts = _ts()
        ctx = ts.context_from(context, n_threads=self.threads)
        if secret and not ctx.is_private():
            raise AccessError(
                "this CKKS context holds no secret key: finalize runs on the key holder's "
                "machine, with the home that ran 'fed init'"
            )
        return ctx

    def encrypt(self, ctx: Any, values: np.ndarray) -> bytes:
        """Encrypt up to ``slots`` float values into one serialized ciphertext."""
        return _ts().ckks_vector(ctx, values.astype(np.float64).tolist()).serialize()

    def load(self, ctx: Any, blob: bytes, params: CkksParams) -> Any:
        """Deserialize one ciphertext and check it was encoded at the round's scale."""
        vec = _ts().ckks_vector_from(ctx, blob)
        scale = vec.data.ciphertext()[0].scale
        if scale != 2.0**params.global_scale_bits:
            raise ValidationError(
                f"ciphertext scale 2^{np.log2(scale):.1f} does not match the round's scale "
                f"2^{params.global_scale_bits}: contribute again with this round's public context"
            )
        return vec

    def add(self, ctx: Any, blobs: Sequence[bytes], params: CkksParams) -> bytes:
        """Homomorphic sum of ciphertexts; returns a new serialized ciphertext.

        Every input is deserialized into a fresh object, so adding into the
        first one in place touches no input bytes (and skips TenSEAL's slow
        ``copy()``).
        """
        acc = self.load(ctx, blobs[0], params)
        for blob in blobs[1:]:
            acc += self.load(ctx, blob, params)
        return acc.serialize()

    def decrypt(self, ctx: Any, blob: bytes, n: int, params: CkksParams) -> np.ndarray:
        """Decrypt one ciphertext to its first ``n`` values (float64)."""
        return np.asarray(self.load(ctx, blob, params).decrypt(), dtype=np.float64)[:n]
