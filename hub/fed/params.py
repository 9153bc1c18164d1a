"""CKKS parameters: the 128-bit security check and TenSEAL context construction.

The security table is the HomomorphicEncryption.org standard (Albrecht et al.,
"Homomorphic Encryption Security Standard", 2018, Table 1, classical 128-bit
security, ternary secret): for each ring dimension N the largest total
coefficient modulus, in bits, that still gives 128-bit security. SEAL uses
the same table for its defaults.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from hub.errors import ValidationError

MAX_LOG_Q_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
"""Ring dimension N -> largest sum of coefficient-modulus bits for 128-bit security."""

DEFAULT_N = 8192
DEFAULT_COEFF_BITS = (60, 40, 40, 60)
DEFAULT_SCALE_BITS = 40


@dataclass(frozen=True)
class CkksParams:
    """The public parameters of a round's CKKS context.

    Args:
        poly_modulus_degree: ring dimension N; a ciphertext holds N/2 values.
        coeff_mod_bit_sizes: bit sizes of the coefficient-modulus primes.
        global_scale_bits: log2 of the encoding scale (precision of the fixed point).
    """

    poly_modulus_degree: int = DEFAULT_N
    coeff_mod_bit_sizes: tuple[int, ...] = DEFAULT_COEFF_BITS
    global_scale_bits: int = DEFAULT_SCALE_BITS

    @property
    def slots(self) -> int:
        """Values per ciphertext (N/2): the chunk size of every encrypted vector."""
        return self.poly_modulus_degree // 2

    @property
    def log_q(self) -> int:
        """Total bits of the coefficient modulus."""
        return sum(self.coeff_mod_bit_sizes)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (lists, not tuples), the form stored in round and contribution files."""
        d = asdict(self)
        d["coeff_mod_bit_sizes"] = list(self.coeff_mod_bit_sizes)
        return d

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CkksParams:
        """Inverse of :meth:`to_json`."""
        return cls(
            int(data["poly_modulus_degree"]),
            tuple(int(b) for b in data["coeff_mod_bit_sizes"]),
            int(data["global_scale_bits"]),
        )

    def digest(self) -> str:
        """sha256 of the canonical JSON form; contributions bind to it."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()


def check_params(params: CkksParams, *, insecure_for_tests: bool = False) -> CkksParams:
    """Refuse parameters that are malformed or below 128-bit security.

    Args:
        params: the candidate parameters.
        insecure_for_tests: skip only the security-level check (never the
            well-formedness checks). Test code passes it to run logic tests on
            a small ring; no command-line flag or setting reaches it.

    Returns:
        ``params`` unchanged.

    Raises:
        ValidationError: one line naming every problem and the secure default.
    """
    problems = []
    n, bits = params.poly_modulus_degree, params.coeff_mod_bit_sizes
    if n not in MAX_LOG_Q_128:
        problems.append(f"N={n} is not a power of two in {sorted(MAX_LOG_Q_128)}")
    if len(bits) < 2:
        problems.append(f"coefficient modulus {list(bits)} needs at least 2 primes")
    if any(b < 14 or b > 60 for b in bits):
        problems.append(f"coefficient bit sizes {list(bits)} must each be 14..60")
    # The data prime must hold a scaled value with room to spare; rescaling primes
    # (the middle ones) must match the scale. Aggregation only adds, so 2 primes do.
    if bits and params.global_scale_bits >= bits[0]:
        problems.append(f"scale 2^{params.global_scale_bits} leaves no room in the first prime")
    if len(bits) >= 3 and params.global_scale_bits > min(bits[1:-1]):
        problems.append(
            f"scale 2^{params.global_scale_bits} exceeds the middle primes ({list(bits[1:-1])} bits)"
        )
    if problems:
        raise ValidationError(
            f"invalid CKKS parameters: {'; '.join(problems)}: use N=8192, "
            "coefficient bits 60,40,40,60, scale 2^40"
        )
    if not insecure_for_tests and params.log_q > MAX_LOG_Q_128[n]:
        raise ValidationError(
            f"CKKS parameters below 128-bit security: N={n} allows at most "
            f"{MAX_LOG_Q_128[n]} coefficient-modulus bits, got {params.log_q} "
            f"({','.join(map(str, bits))}): raise N or use the default N=8192 with 60,40,40,60"
        )
    return params


def params_from_settings(
    n: int, coeff_bits: Sequence[int], scale_bits: int, *, insecure_for_tests: bool = False
) -> CkksParams:
    """Build and check parameters from the ``[fed]`` settings or flags."""
    return check_params(
        CkksParams(int(n), tuple(int(b) for b in coeff_bits), int(scale_bits)),
        insecure_for_tests=insecure_for_tests,
    )
