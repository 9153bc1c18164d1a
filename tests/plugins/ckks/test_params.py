"""CKKS parameters: 128-bit security per the HE standard table, refused otherwise."""

from __future__ import annotations

import pytest

from hub.errors import ValidationError
from hub.fed.params import CkksParams, check_params


def test_default_parameters_are_the_128_bit_set() -> None:
    p = check_params(CkksParams())
    assert (p.poly_modulus_degree, p.coeff_mod_bit_sizes, p.global_scale_bits) == (
        8192,
        (60, 40, 40, 60),
        40,
    )
    assert p.slots == 4096


def test_refuses_modulus_too_large_for_ring() -> None:
    with pytest.raises(ValidationError) as err:
        check_params(CkksParams(4096, (60, 40, 40, 60), 40))
    assert str(err.value) == (
        "CKKS parameters below 128-bit security: N=4096 allows at most 109 coefficient-modulus "
        "bits, got 200 (60,40,40,60): raise N or use the default N=8192 with 60,40,40,60"
    )


def test_refuses_8192_with_more_than_218_bits() -> None:
    with pytest.raises(ValidationError, match="below 128-bit security: N=8192 allows at most 218"):
        check_params(CkksParams(8192, (60, 60, 60, 60), 40))


def test_accepts_largest_secure_modulus_for_ring() -> None:
    assert check_params(CkksParams(4096, (40, 29, 40), 29)).log_q == 109


def test_insecure_for_tests_skips_only_the_security_level() -> None:
    assert check_params(CkksParams(2048, (30, 20, 30), 20), insecure_for_tests=True).slots == 1024
    with pytest.raises(ValidationError, match="invalid CKKS parameters"):
        check_params(CkksParams(3000, (30, 20, 30), 20), insecure_for_tests=True)


def test_refuses_scale_above_middle_primes() -> None:
    with pytest.raises(ValidationError, match=r"scale 2\^50 exceeds the middle primes"):
        check_params(CkksParams(8192, (60, 40, 40, 60), 50))


def test_params_digest_changes_with_scale() -> None:
    assert CkksParams().digest() != CkksParams(8192, (60, 40, 40, 60), 39).digest()
