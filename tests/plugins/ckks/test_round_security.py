"""Rounds are signed by the key holder the contributors expect; weights are FedAvg-relative.

Each test is an attack or a bad input from issue 15: an unsigned round, a round
signed by another team, a signed round whose aggregator or context hash was
edited, a contribution short of its declared chunks, zero/negative/NaN/huge
weights, and a contribution trained from another adapter than the round's start.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

import plugins.ckks
import plugins.plain
from hub.errors import IntegrityError, ValidationError
from hub.fed.fedfile import FedFile, canonical, write_fed_file
from hub.plugins import Hub

START = {"ref": "merged@1", "sha256": "ab" * 32}


@pytest.fixture(scope="module")
def hub() -> Any:
    return Hub(builtins=False, extra=[("ckks", plugins.ckks), ("plain", plugins.plain)])


@pytest.fixture(scope="module")
def agg(hub: Any) -> Any:
    return hub.aggregators["ckks"]


@pytest.fixture
def new_round(agg: Any, tmp_path: Path, signers: Any, logic_params: dict) -> Any:
    """``new_round(teams="ab", start=None, holder="hold") -> (round_dir, key_dir)``."""

    def make(teams: str = "ab", start: Any = None, holder: str = "hold") -> tuple[Path, Path]:
        rdir, kdir = tmp_path / "round", tmp_path / "keys"
        agg.init_round(
            rdir,
            round_id="r1",
            teams=list(teams),
            mode="ffa",
            key_dir=kdir,
            params=logic_params,
            key_holder=holder,
            sign=signers[holder],
            start=start,
        )
        return rdir, kdir

    return make


def contribute(agg: Any, rdir: Path, team: str, signers: Any, verifier: Any, **kw: Any) -> Path:
    from tests.plugins.ckks.conftest import make_adapter

    kw.setdefault("weight", 1.0)
    return agg.contribute(
        rdir,
        team=team,
        adapter=kw.pop("adapter", None) or make_adapter(f"{team}-task", ord(team)),
        sign=signers[team],
        verify=verifier,
        key_holder=kw.pop("key_holder", "hold"),
        **kw,
    )


def edit_manifest(rdir: Path, change: Any) -> None:
    doc = json.loads((rdir / "round.json").read_text())
    change(doc)
    (rdir / "round.json").write_text(json.dumps(doc))


def one_line(exc: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(exc.value)
    return str(exc.value)


# --- the round manifest -------------------------------------------------------------------


def test_init_refuses_an_unsigned_round(agg: Any, tmp_path: Path, logic_params: dict) -> None:
    with pytest.raises(ValidationError, match="a round must be signed by its key holder"):
        agg.init_round(
            tmp_path / "r",
            round_id="r1",
            teams=["a", "b"],
            mode="ffa",
            key_dir=tmp_path / "k",
            params=logic_params,
        )
    assert not (tmp_path / "r" / "round.json").exists()


def strip_signature(doc: dict) -> None:
    doc["meta"]["key_holder"], doc["signatures"] = None, {}


def test_unsigned_round_is_refused_by_every_role(
    agg: Any, new_round: Any, signers: Any, verifier: Any
) -> None:
    rdir, kdir = new_round()
    for t in "ab":
        contribute(agg, rdir, t, signers, verifier)
    edit_manifest(rdir, strip_signature)
    calls = {
        "contribute": lambda: contribute(agg, rdir, "a", signers, verifier),
        "aggregate": lambda: agg.aggregate(rdir, verify=verifier),
        "finalize": lambda: agg.finalize(rdir, key_dir=kdir, name="m", verify=verifier),
        "python api without verifier": lambda: agg.aggregate(rdir, verify=None),
    }
    for role, call in calls.items():
        with pytest.raises(IntegrityError) as err:
            call()
        assert "round.json is not signed by a key holder: refuse this round" in one_line(err), role
    assert not (rdir / "aggregate.fedc").exists()


def test_round_signed_by_an_unexpected_team_is_refused(
    agg: Any, new_round: Any, signers: Any, verifier: Any
) -> None:
    # Team a (trusted, so its signature verifies) starts a round as its own key holder.
    rdir, _ = new_round(teams="bc", holder="a")
    with pytest.raises(IntegrityError) as err:
        contribute(agg, rdir, "b", signers, verifier, key_holder="hold")
    assert one_line(err) == (
        "round r1 is signed by team 'a', not by the key holder you expect ('hold'): "
        "do not contribute; check with 'hold'"
    )
    assert not list((rdir / "contributions").iterdir())


def test_round_re_signed_by_another_team_under_the_holder_name_is_refused(
    agg: Any, new_round: Any, signers: Any, verifier: Any
) -> None:
    rdir, _ = new_round()

    def resign_as_a(doc: dict) -> None:
        doc["signatures"] = signers["a"](canonical(doc["meta"]))

    edit_manifest(rdir, resign_as_a)
    with pytest.raises(IntegrityError, match="signed by 'a'"):
        contribute(agg, rdir, "a", signers, verifier)


@pytest.mark.parametrize(
    ("field", "value"),
    [("aggregator", "plain"), ("context_sha256", "00" * 32), ("params_sha256", "11" * 32)],
)
def test_round_with_an_edited_signed_field_is_refused(
    agg: Any, new_round: Any, signers: Any, verifier: Any, field: str, value: str
) -> None:
    rdir, _ = new_round()
    edit_manifest(rdir, lambda doc: doc["meta"].__setitem__(field, value))
    with pytest.raises(IntegrityError, match="signature by team 'hold' does not verify"):
        contribute(agg, rdir, "a", signers, verifier)
    assert not list((rdir / "contributions").iterdir())


def test_plain_aggregator_refuses_a_ckks_round_even_signed(
    hub: Any, new_round: Any, signers: Any, verifier: Any
) -> None:
    rdir, _ = new_round()
    with pytest.raises(IntegrityError, match="started for the 'ckks' aggregator, not 'plain'"):
        contribute(hub.aggregators["plain"], rdir, "a", signers, verifier)


# --- contributions --------------------------------------------------------------------------


def test_contribution_short_of_its_declared_chunks_is_a_one_line_refusal(
    agg: Any, new_round: Any, signers: Any, verifier: Any
) -> None:
    rdir, _ = new_round()
    contribute(agg, rdir, "a", signers, verifier)
    path = contribute(agg, rdir, "b", signers, verifier)
    with FedFile(path) as ff:
        meta, sections = dict(ff.meta), list(ff.sections())
    assert meta["n_chunks"] >= 2
    del meta["section_sha256"]
    # Team b signs a file that lists one section fewer than its n_chunks (a buggy client).
    write_fed_file(path, meta, sections[:-1], signers["b"])
    with pytest.raises(ValidationError) as err:
        agg.aggregate(rdir, verify=verifier)
    assert one_line(err) == (
        f"contribution b.fedc from team 'b' lists {len(sections) - 1} sections but declares "
        f"{meta['n_chunks']} chunks plus the frozen A: the file is short or malformed; "
        "contribute again"
    )
    assert not (rdir / "aggregate.fedc").exists()


@pytest.mark.parametrize("weight", [0.0, -1.0, math.nan, math.inf, 1e12, True])
def test_contribute_refuses_bad_weights(
    agg: Any, new_round: Any, signers: Any, verifier: Any, weight: Any
) -> None:
    rdir, _ = new_round()
    with pytest.raises(ValidationError) as err:
        contribute(agg, rdir, "a", signers, verifier, weight=weight)
    assert one_line(err) == (
        f"weight {weight!r} is not a number in (0, 1e+09]: pass a relative weight such as "
        "the team's number of training examples (--weight 2000)"
    )
    assert not list((rdir / "contributions").iterdir())


def test_aggregate_refuses_a_signed_contribution_with_a_nan_weight(
    agg: Any, new_round: Any, signers: Any, verifier: Any
) -> None:
    rdir, _ = new_round()
    contribute(agg, rdir, "a", signers, verifier)
    path = contribute(agg, rdir, "b", signers, verifier)
    with FedFile(path) as ff:
        meta, sections = dict(ff.meta), list(ff.sections())
    meta["weight"] = math.nan
    del meta["section_sha256"]
    write_fed_file(path, meta, sections, signers["b"])
    with pytest.raises(ValidationError, match=r"team 'b''s weight nan is not a number in"):
        agg.aggregate(rdir, verify=verifier)


# --- FedAvg weights -------------------------------------------------------------------------


def lora_b(payload: Any) -> dict[str, Any]:
    return {k: v.double() for k, v in payload.tensors().items() if k.endswith("lora_B.weight")}


def test_finalize_publishes_the_weighted_mean_and_reports_shares(
    hub: Any, signers: Any, verifier: Any, tmp_path: Path
) -> None:
    import torch

    from tests.plugins.ckks.conftest import make_adapter

    # a plain round, so the check is float64-exact before bf16
    plain = hub.aggregators["plain"]
    prdir, pkdir = tmp_path / "plain-round", tmp_path / "plain-keys"
    plain.init_round(
        prdir,
        round_id="p1",
        teams=["a", "b"],
        mode="ffa",
        key_dir=pkdir,
        key_holder="hold",
        sign=signers["hold"],
    )
    ads = {"a": make_adapter("a", 1), "b": make_adapter("b", 2)}
    weights = {"a": 3000.0, "b": 1000.0}
    for t in "ab":
        contribute(plain, prdir, t, signers, verifier, adapter=ads[t], weight=weights[t])
    plain.aggregate(prdir, verify=verifier)
    mean = plain.finalize(prdir, key_dir=pkdir, name="m", verify=verifier)
    report = mean.manifest["fed"]
    assert report["weight_sum"] == 4000.0 and report["combine"] == "mean"
    assert report["shares"] == {"a": 0.75, "b": 0.25}
    got, a, b = lora_b(mean), lora_b(ads["a"]), lora_b(ads["b"])
    for name in got:
        want = (0.75 * a[name] + 0.25 * b[name]).to(torch.bfloat16).double()
        assert torch.equal(got[name], want)
    raw = plain.finalize(prdir, key_dir=pkdir, name="m", verify=verifier, raw_sum=True)
    assert raw.manifest["fed"]["combine"] == "sum"
    for name in got:
        want = (3000 * a[name] + 1000 * b[name]).to(torch.bfloat16).double()
        assert torch.equal(lora_b(raw)[name], want)


def test_finalize_takes_weights_from_signed_contributions_not_the_aggregate(
    agg: Any, new_round: Any, signers: Any, verifier: Any
) -> None:
    rdir, kdir = new_round()
    contribute(agg, rdir, "a", signers, verifier, weight=3.0)
    contribute(agg, rdir, "b", signers, verifier, weight=1.0)
    out = agg.aggregate(rdir, verify=verifier)
    with FedFile(out) as ff:
        meta, sections = dict(ff.meta), list(ff.sections())
    meta["weights"] = {"a": 1.0, "b": 1000.0}  # the aggregator lies about the weights
    del meta["section_sha256"]
    write_fed_file(out, meta, sections, None)
    merged = agg.finalize(rdir, key_dir=kdir, name="m", verify=verifier)
    assert merged.manifest["fed"]["weights"] == {"a": 3.0, "b": 1.0}


def test_default_weight_is_the_training_examples_of_the_adapter() -> None:
    from hub.fed.contribute import default_weight
    from tests.plugins.ckks.conftest import make_adapter

    ad = make_adapter("a", 1)
    assert default_weight(ad) == (1.0, "default")
    ad.manifest = {"metadata": {"data": {"train_rows": 1800}}}
    assert default_weight(ad) == (1800.0, "training examples")


# --- chained rounds -------------------------------------------------------------------------


def test_chained_round_refuses_an_adapter_trained_from_elsewhere(
    agg: Any, new_round: Any, signers: Any, verifier: Any
) -> None:
    rdir, _ = new_round(start=START)
    with pytest.raises(ValidationError) as err:
        contribute(agg, rdir, "a", signers, verifier, start_sha256=None)
    assert one_line(err) == (
        "team 'a''s adapter was trained from scratch, but round r1 starts from merged@1 "
        "(abababababab): train again with 'qlora-hub train --init-adapter merged@1'"
    )
    with pytest.raises(ValidationError, match="trained from adapter weights cdcdcdcdcdcd, but"):
        contribute(agg, rdir, "a", signers, verifier, start_sha256="cd" * 32)
    assert not list((rdir / "contributions").iterdir())


def test_chained_round_records_its_start_in_the_merged_adapter(
    agg: Any, new_round: Any, signers: Any, verifier: Any
) -> None:
    rdir, kdir = new_round(start=START)
    for t in "ab":
        contribute(agg, rdir, t, signers, verifier, start_sha256=START["sha256"])
    agg.aggregate(rdir, verify=verifier)
    merged = agg.finalize(rdir, key_dir=kdir, name="m", verify=verifier)
    assert merged.manifest["fed"]["start"] == START


def test_aggregate_refuses_a_contribution_from_an_unchained_round(
    agg: Any, new_round: Any, signers: Any, verifier: Any, tmp_path: Path
) -> None:
    rdir, _ = new_round(start=START)
    contribute(agg, rdir, "a", signers, verifier, start_sha256=START["sha256"])
    path = contribute(agg, rdir, "b", signers, verifier, start_sha256=START["sha256"])
    with FedFile(path) as ff:
        meta, sections = dict(ff.meta), list(ff.sections())
    meta["start_sha256"] = None
    del meta["section_sha256"]
    write_fed_file(path, meta, sections, signers["b"])
    with pytest.raises(ValidationError, match="was not trained from the adapter round r1 starts"):
        agg.aggregate(rdir, verify=verifier)
