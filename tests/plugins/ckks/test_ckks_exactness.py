"""With the real 128-bit parameters (N=8192, 60/40/40/60, 2^40) CKKS sums are exact to 1e-6.

Each round runs once per module (three teams, adapter-scale values) under
``ckks`` and under the ``plain`` reference; tests compare decrypted sums
before bf16 rounding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import plugins.ckks
import plugins.plain
from hub.fed.finalize import decrypt_aggregate
from hub.fed.modes import lora_pairs, lora_scale
from hub.fed.round import open_round, secret_context
from hub.plugins import Hub

WEIGHTS = {"a": 0.5, "b": 0.3, "c": 0.2}


@pytest.fixture(scope="module")
def hub() -> Hub:
    return Hub(builtins=False, extra=[("ckks", plugins.ckks), ("plain", plugins.plain)])


@pytest.fixture(scope="module")
def rounds(
    hub: Hub,
    tmp_path_factory: pytest.TempPathFactory,
    signers: Any,
    verifier: Any,
    adapter_factory: Any,
    round_runner: Any,
) -> dict[tuple[str, str], dict[str, Any]]:
    """(aggregator, mode) -> decrypted sum, round dirs and the adapters used."""
    out = {}
    for mode in ("ffa", "dense"):
        # dense: teams' A differ (no shared seed needed); ffa: frozen shared A.
        a_seed = 7 if mode == "ffa" else None
        ads = {
            t: adapter_factory(f"{t}-task", s, a_seed=a_seed)
            for t, s in zip("abc", (1, 2, 3), strict=True)
        }
        for name in ("ckks", "plain"):
            agg = hub.aggregators[name]
            root = tmp_path_factory.mktemp(f"{name}-{mode}")
            rdir, kdir = round_runner(agg, root, signers, verifier, ads, mode=mode, params=None)
            rnd = open_round(rdir)
            meta, vector, frozen = decrypt_aggregate(rnd, agg.codec, secret_context(kdir, rnd))
            out[name, mode] = {
                "dir": rdir,
                "keys": kdir,
                "vector": vector,
                "meta": meta,
                "frozen": frozen,
                "adapters": ads,
                "agg": agg,
            }
    return out


def test_ckks_sum_equals_plain_sum_within_1e_6(rounds: dict) -> None:
    for mode in ("ffa", "dense"):
        diff = np.abs(rounds["ckks", mode]["vector"] - rounds["plain", mode]["vector"]).max()
        assert diff < 1e-6, (mode, diff)


def test_ckks_round_uses_default_128_bit_parameters(rounds: dict) -> None:
    assert rounds["ckks", "ffa"]["meta"]["params"] == {
        "poly_modulus_degree": 8192,
        "coeff_mod_bit_sizes": [60, 40, 40, 60],
        "global_scale_bits": 40,
    }


def test_ffa_sum_equals_weighted_sum_of_b(rounds: dict) -> None:
    r = rounds["ckks", "ffa"]
    want = np.concatenate(
        [
            sum(
                WEIGHTS[t]
                * lora_pairs(ad.tensors(), ad.config())[m][1].double().reshape(-1).numpy()
                for t, ad in r["adapters"].items()
            )
            for m in lora_pairs(r["adapters"]["a"].tensors(), r["adapters"]["a"].config())
        ]
    )
    assert np.abs(r["vector"] - want).max() < 1e-6


def test_dense_sum_before_svd_equals_weighted_sum_of_ba(rounds: dict) -> None:
    r = rounds["ckks", "dense"]
    parts = []
    first = r["adapters"]["a"]
    for m in lora_pairs(first.tensors(), first.config()):
        total = 0
        for t, ad in r["adapters"].items():
            a, b = lora_pairs(ad.tensors(), ad.config())[m]
            total = total + WEIGHTS[t] * lora_scale(ad.config()) * (b.double() @ a.double())
        parts.append(total.reshape(-1).numpy())
    assert np.abs(r["vector"] - np.concatenate(parts)).max() < 1e-6


def test_ffa_sum_differs_from_every_single_team_update(rounds: dict) -> None:
    r = rounds["ckks", "ffa"]
    for ad in r["adapters"].values():
        single = np.concatenate(
            [
                b.double().reshape(-1).numpy()
                for _, b in lora_pairs(ad.tensors(), ad.config()).values()
            ]
        )
        assert np.abs(r["vector"] - single).max() > 1e-3
        assert np.abs(r["vector"] - WEIGHTS["a"] * single).max() > 1e-3


def test_ffa_keeps_a_byte_identical(rounds: dict) -> None:
    r = rounds["ckks", "ffa"]
    a = r["adapters"]["b"].tensors()
    assert all(r["frozen"][n].numpy().tobytes() == a[n].numpy().tobytes() for n in r["frozen"])


def test_public_context_cannot_decrypt(rounds: dict) -> None:
    import tenseal as ts

    r = rounds["ckks", "ffa"]
    public = ts.context_from((r["dir"] / "public.context").read_bytes())
    assert not public.is_private()
    from hub.fed.fedfile import FedFile

    with FedFile(r["dir"] / "aggregate.fedc") as ff:
        sections = ff.sections()
        next(sections)  # the frozen A section
        vec = ts.ckks_vector_from(public, next(sections))
    with pytest.raises(ValueError, match="doesn't hold a secret_key"):
        vec.decrypt()


def test_finalize_with_public_context_only_is_refused(rounds: dict) -> None:
    from hub.errors import AccessError

    r = rounds["ckks", "ffa"]
    with pytest.raises(AccessError, match="holds no secret key"):
        r["agg"].codec.open((r["dir"] / "public.context").read_bytes(), secret=True)


def test_secret_key_is_in_no_shared_file(rounds: dict, tmp_path: Path) -> None:
    import tenseal as ts

    r = rounds["ckks", "ffa"]
    secret_file = r["keys"] / "secret.context"
    key_path = tmp_path / "sk"
    ts.context_from(secret_file.read_bytes()).secret_key().data.save(str(key_path))
    sk = key_path.read_bytes()
    probes = [sk[i : i + 64] for i in range(1024, len(sk) - 64, len(sk) // 8)]
    assert all(p in secret_file.read_bytes() for p in probes)  # the probe finds a real copy
    shared = [p for p in r["dir"].rglob("*") if p.is_file()]
    assert {p.name for p in shared} >= {"public.context", "round.json", "a.fedc", "aggregate.fedc"}
    for path in shared:
        data = path.read_bytes()
        assert not any(p in data for p in probes), path.name


def test_secret_context_file_is_owner_only(rounds: dict) -> None:
    assert (rounds["ckks", "ffa"]["keys"] / "secret.context").stat().st_mode & 0o077 == 0
