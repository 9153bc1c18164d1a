"""Every way a round can be wrong is refused with a one-line error, and nothing is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import plugins.ckks
from hub.errors import AccessError, IntegrityError, UnknownNameError, ValidationError
from hub.fed.contribute import write_contribution
from hub.fed.round import open_round
from hub.plugins import Hub
from plugins.ckks.codec import CkksCodec

WEIGHTS = {"a": 0.5, "b": 0.3, "c": 0.2}


@pytest.fixture(scope="module")
def agg() -> Any:
    return Hub(builtins=False, extra=[("ckks", plugins.ckks)]).aggregators["ckks"]


@pytest.fixture
def start(agg: Any, tmp_path: Path, signers: Any, logic_params: dict) -> Any:
    """``start(round_id="r1", sub="x", mode="ffa") -> (round_dir, key_dir)``."""

    def make(round_id: str = "r1", sub: str = "x", mode: str = "ffa") -> tuple[Path, Path]:
        rdir, kdir = tmp_path / sub / "round", tmp_path / sub / "keys"
        agg.init_round(
            rdir,
            round_id=round_id,
            teams=["a", "b", "c"],
            mode=mode,
            key_dir=kdir,
            params=logic_params,
            key_holder="hold",
            sign=signers["hold"],
        )
        return rdir, kdir

    return make


@pytest.fixture
def give(agg: Any, signers: Any, verifier: Any, adapters: dict) -> Any:
    """``give(round_dir, team, adapter=None, sign_as=None)``: one team contributes."""

    def contribute(rdir: Path, team: str, adapter: Any = None, sign_as: Any = "self") -> Path:
        signer = signers[team] if sign_as == "self" else (sign_as and signers[sign_as])
        return agg.contribute(
            rdir,
            team=team,
            adapter=adapter or adapters[team],
            weight=WEIGHTS[team],
            sign=signer,
            verify=verifier,
        )

    return contribute


def refused(agg: Any, rdir: Path, verifier: Any, exc: type, match: str) -> None:
    """Aggregation raises ``exc`` matching ``match`` and writes no aggregate."""
    with pytest.raises(exc, match=match) as err:
        agg.aggregate(rdir, verify=verifier)
    assert "\n" not in str(err.value)
    assert not (rdir / "aggregate.fedc").exists()


def test_init_refuses_parameters_below_128_bit_security(agg: Any, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="below 128-bit security: N=4096 allows at most 109"):
        agg.init_round(
            tmp_path / "r",
            round_id="r1",
            teams=["a", "b"],
            mode="ffa",
            key_dir=tmp_path / "k",
            params={
                "poly_modulus_degree": 4096,
                "coeff_mod_bit_sizes": [60, 40, 40, 60],
                "global_scale_bits": 40,
            },
        )
    assert not (tmp_path / "r").exists()


def test_init_refuses_duplicate_team(agg: Any, tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as err:
        agg.init_round(
            tmp_path / "r", round_id="r1", teams=["a", "b", "a"], mode="ffa", key_dir=tmp_path / "k"
        )
    assert str(err.value) == "team 'a' is listed twice in --teams: list each team once"


def test_init_refuses_unknown_mode(agg: Any, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="unknown merge mode 'avg': use one of ffa, fedavg"):
        agg.init_round(
            tmp_path / "r", round_id="r1", teams=["a", "b"], mode="avg", key_dir=tmp_path / "k"
        )


def test_contribute_refuses_unknown_team(
    start: Any, agg: Any, adapters: dict, signers: Any
) -> None:
    rdir, _ = start()
    with pytest.raises(UnknownNameError) as err:
        agg.contribute(rdir, team="hold", adapter=adapters["a"], weight=1.0, sign=signers["hold"])
    assert str(err.value) == (
        "team 'hold' is not part of round r1 (teams: a, b, c): the key holder lists teams "
        "with 'fed init --teams'"
    )


def test_contribute_refuses_second_contribution(start: Any, give: Any) -> None:
    rdir, _ = start()
    give(rdir, "a")
    with pytest.raises(ValidationError, match="team 'a' already contributed to round r1"):
        give(rdir, "a")


def test_contribute_refuses_non_positive_weight(
    start: Any, agg: Any, adapters: dict, signers: Any
) -> None:
    rdir, _ = start()
    with pytest.raises(ValidationError, match=r"weight -1.0 is not a number in \(0, 1e\+09\]"):
        agg.contribute(rdir, team="a", adapter=adapters["a"], weight=-1.0, sign=signers["a"])


def test_contribute_refuses_tampered_round_manifest(start: Any, give: Any) -> None:
    rdir, _ = start()
    doc = json.loads((rdir / "round.json").read_text())
    doc["meta"]["teams"].append("mallory")
    (rdir / "round.json").write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="signature by team 'hold' does not verify"):
        give(rdir, "a")


def test_aggregate_refuses_missing_team(start: Any, give: Any, agg: Any, verifier: Any) -> None:
    rdir, _ = start()
    give(rdir, "a"), give(rdir, "b")
    refused(agg, rdir, verifier, ValidationError, "missing contributions from c")


def test_aggregate_refuses_duplicate_team(start: Any, give: Any, agg: Any, verifier: Any) -> None:
    rdir, _ = start()
    for t in "abc":
        give(rdir, t)
    shutil.copy(rdir / "contributions" / "c.fedc", rdir / "contributions" / "c2.fedc")
    refused(
        agg,
        rdir,
        verifier,
        ValidationError,
        r"duplicate contribution from team 'c' in round r1 \(c.fedc and c2.fedc\)",
    )


def test_aggregate_refuses_unsigned(start: Any, give: Any, agg: Any, verifier: Any) -> None:
    rdir, _ = start()
    give(rdir, "a"), give(rdir, "b"), give(rdir, "c", sign_as=None)
    refused(agg, rdir, verifier, IntegrityError, "contribution c.fedc is unsigned")


def test_aggregate_refuses_signature_by_another_team(
    start: Any, give: Any, agg: Any, verifier: Any
) -> None:
    rdir, _ = start()
    give(rdir, "a"), give(rdir, "b"), give(rdir, "c", sign_as="b")
    refused(agg, rdir, verifier, IntegrityError, "a file for team 'c' is signed by 'b'")


def test_aggregate_refuses_altered_metadata(start: Any, give: Any, agg: Any, verifier: Any) -> None:
    rdir, _ = start()
    for t in "abc":
        give(rdir, t)
    path = rdir / "contributions" / "c.fedc"
    path.write_bytes(path.read_bytes().replace(b'"weight": 0.2', b'"weight": 0.9'))
    refused(agg, rdir, verifier, IntegrityError, "signature by team 'c' does not verify")


def test_aggregate_refuses_altered_ciphertext(
    start: Any, give: Any, agg: Any, verifier: Any
) -> None:
    rdir, _ = start()
    for t in "abc":
        give(rdir, t)
    path = rdir / "contributions" / "b.fedc"
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))
    refused(
        agg, rdir, verifier, IntegrityError, "b.fedc: section .* does not match its signed hash"
    )


def test_aggregate_refuses_contribution_for_another_round(
    start: Any, give: Any, agg: Any, verifier: Any
) -> None:
    old, _ = start(round_id="r0", sub="old")
    give(old, "c")
    rdir, _ = start()
    give(rdir, "a"), give(rdir, "b")
    shutil.copy(old / "contributions" / "c.fedc", rdir / "contributions" / "c.fedc")
    refused(
        agg,
        rdir,
        verifier,
        ValidationError,
        "contribution c.fedc from team 'c' is for round r0, not r1: contribute again",
    )


def test_aggregate_refuses_contribution_under_another_context(
    start: Any, give: Any, agg: Any, verifier: Any
) -> None:
    other, _ = start(sub="other")  # same round id, fresh keys
    give(other, "c")
    rdir, _ = start()
    give(rdir, "a"), give(rdir, "b")
    shutil.copy(other / "contributions" / "c.fedc", rdir / "contributions" / "c.fedc")
    refused(
        agg, rdir, verifier, ValidationError, "was encrypted with another round's public context"
    )


def test_aggregate_refuses_shape_mismatch(
    start: Any, give: Any, agg: Any, verifier: Any, adapter_factory: Any
) -> None:
    rdir, _ = start()
    (
        give(rdir, "a"),
        give(rdir, "b"),
        give(rdir, "c", adapter=adapter_factory("c", 3, r=8, alpha=16)),
    )
    refused(agg, rdir, verifier, ValidationError, r"shape mismatch: team 'c'.s tensors differ")


def test_aggregate_refuses_lora_scale_mismatch(
    start: Any, give: Any, agg: Any, verifier: Any, adapter_factory: Any
) -> None:
    rdir, _ = start()
    give(rdir, "a"), give(rdir, "b"), give(rdir, "c", adapter=adapter_factory("c", 3, alpha=32))
    refused(agg, rdir, verifier, ValidationError, "LoRA scale mismatch: team 'c' has")


def test_aggregate_refuses_ckks_scale_mismatch(
    start: Any, give: Any, agg: Any, verifier: Any, adapters: dict, signers: Any
) -> None:
    class OffScaleCodec(CkksCodec):
        """A contributor whose encoder uses 2^30 instead of the round's 2^20."""

        def encrypt(self, ctx: Any, values: Any) -> bytes:
            ctx.global_scale = 2.0**30
            return super().encrypt(ctx, values)

    rdir, _ = start()
    give(rdir, "a"), give(rdir, "b")
    write_contribution(
        open_round(rdir),
        OffScaleCodec(),
        team="c",
        adapter=adapters["c"],
        weight=0.2,
        sign=signers["c"],
    )
    refused(
        agg,
        rdir,
        verifier,
        ValidationError,
        r"ciphertext scale 2\^30.0 does not match the round.s scale 2\^40",
    )


def test_aggregate_refuses_different_frozen_a(
    start: Any, give: Any, agg: Any, verifier: Any, adapter_factory: Any
) -> None:
    rdir, _ = start()
    give(rdir, "a"), give(rdir, "b"), give(rdir, "c", adapter=adapter_factory("c", 3, a_seed=8))
    refused(
        agg,
        rdir,
        verifier,
        ValidationError,
        "frozen A differs: team 'c'.s lora_A is not byte-identical",
    )


def test_aggregate_refuses_round_of_another_aggregator(
    start: Any, give: Any, verifier: Any
) -> None:
    import plugins.plain

    plain = Hub(builtins=False, extra=[("plain", plugins.plain)]).aggregators["plain"]
    rdir, _ = start()
    with pytest.raises(IntegrityError, match="round r1 was started for the 'ckks' aggregator"):
        plain.aggregate(rdir, verify=verifier)


def test_finalize_without_the_secret_key_is_refused(
    start: Any, give: Any, agg: Any, verifier: Any, tmp_path: Path
) -> None:
    rdir, _ = start()
    for t in "abc":
        give(rdir, t)
    agg.aggregate(rdir, verify=verifier)
    with pytest.raises(UnknownNameError, match="no secret key for round r1"):
        agg.finalize(rdir, key_dir=tmp_path / "elsewhere", name="m")


def test_finalize_refuses_aggregate_of_other_inputs(
    start: Any, give: Any, agg: Any, verifier: Any, adapter_factory: Any
) -> None:
    rdir, kdir = start()
    for t in "abc":
        give(rdir, t)
    agg.aggregate(rdir, verify=verifier)
    # The key holder re-checks the inputs: a team file swapped after summing is caught.
    (rdir / "contributions" / "c.fedc").unlink()
    give(rdir, "c", adapter=adapter_factory("c", 33))
    with pytest.raises(IntegrityError, match="does not match team 'c'.s signed contribution"):
        agg.finalize(rdir, key_dir=kdir, name="m", verify=verifier)


def test_public_context_only_cannot_finalize(
    start: Any, give: Any, agg: Any, verifier: Any
) -> None:
    rdir, kdir = start()
    for t in "abc":
        give(rdir, t)
    agg.aggregate(rdir, verify=verifier)
    shutil.copy(rdir / "public.context", kdir / "secret.context")
    with pytest.raises(AccessError, match="this CKKS context holds no secret key"):
        agg.finalize(rdir, key_dir=kdir, name="m")


def test_aggregate_refuses_contribution_from_team_outside_round(
    agg: Any,
    start: Any,
    give: Any,
    verifier: Any,
    signers: Any,
    adapters: dict,
    tmp_path: Path,
    logic_params: dict,
) -> None:
    other = tmp_path / "other"
    agg.init_round(
        other,
        round_id="r1",
        teams=["a", "hold"],
        mode="ffa",
        key_dir=tmp_path / "k2",
        params=logic_params,
        key_holder="hold",
        sign=signers["hold"],
    )
    agg.contribute(other, team="hold", adapter=adapters["a"], weight=0.5, sign=signers["hold"])
    rdir, _ = start()
    for t in "abc":
        give(rdir, t)
    shutil.copy(other / "contributions" / "hold.fedc", rdir / "contributions" / "hold.fedc")
    refused(agg, rdir, verifier, UnknownNameError, "team 'hold' is not part of round r1")
