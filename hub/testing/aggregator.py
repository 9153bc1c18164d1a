"""Contract suite for :class:`hub.types.Aggregator` plugins.

Besides the registration checks, every aggregator must run a full round
(init, three teams contribute, aggregate, finalize) through a round
directory and get the weighted sum of the teams' LoRA B matrices (mode
``ffa``: A frozen and shared), must leave contribution files untouched, and
must refuse unknown, duplicate, unsigned and missing contributions.

Fixtures a subclass provides: ``aggregator`` (the object under test) and,
optionally, ``aggregator_params`` (the ``params`` mapping for
``init_round``; default ``None``, the aggregator's secure defaults).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from hub.errors import HubError
from hub.testing.contracts import ProtocolContract
from hub.types import AdapterPayload, Aggregator

TEAMS = ("a", "b", "c")
WEIGHTS = {"a": 0.5, "b": 0.3, "c": 0.2}
MODULES = ("base_model.model.model.layers.0.self_attn.q_proj",)


def contract_adapter(seed: int, r: int = 4, size: int = 64) -> AdapterPayload:
    """A LoRA adapter whose A comes from seed 0 (shared, frozen) and B from ``seed``."""
    import torch
    from safetensors.torch import save

    shared, own = torch.Generator().manual_seed(0), torch.Generator().manual_seed(seed)
    tensors = {}
    for m in MODULES:
        tensors[f"{m}.lora_A.weight"] = torch.randn(r, size, generator=shared) * 0.02
        tensors[f"{m}.lora_B.weight"] = torch.randn(size, r, generator=own) * 0.02
    config = {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": ["q_proj"]}
    return AdapterPayload(
        f"task{seed}",
        {AdapterPayload.CONFIG: json.dumps(config).encode(), AdapterPayload.WEIGHTS: save(tensors)},
    )


class AggregatorContract(ProtocolContract):
    """Subclass in your tests and provide a ``aggregator`` fixture returning the object under test."""

    protocol, kind, fixture_name = Aggregator, "aggregator", "aggregator"

    @pytest.fixture
    def aggregator_params(self) -> Any:
        """``params`` for ``init_round``; override for faster test parameters."""
        return None

    @pytest.fixture(scope="class")
    @classmethod
    def contract_keys(cls, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
        """Real team identities (hub.teams) for a, b, c and key holder k."""
        import base64

        from hub.identity import verify
        from hub.teams import create_team, load_identity, trusted

        home = tmp_path_factory.mktemp("aggregator-contract")
        for team in (*TEAMS, "k"):
            create_team(home, team, passphrase=None)

        def signer(team: str) -> Any:
            ident = load_identity(home, team)
            return lambda data: {
                "team": team,
                "signature": base64.b64encode(ident.sign(data, "fed")).decode(),
            }

        def check(team: str, data: bytes, sigs: Any) -> None:
            if sigs.get("team") != team:
                from hub.errors import IntegrityError

                raise IntegrityError(f"not signed by {team}")
            verify(trusted(home, team), data, base64.b64decode(sigs["signature"]), "fed")

        return {"sign": {t: signer(t) for t in (*TEAMS, "k")}, "verify": check}

    def _init(self, agg: Any, tmp_path: Path, keys: dict, params: Any) -> tuple[Path, Path]:
        rdir, kdir = tmp_path / "round", tmp_path / "keys"
        agg.init_round(
            rdir,
            round_id="r1",
            teams=list(TEAMS),
            mode="ffa",
            key_dir=kdir,
            params=params,
            key_holder="k",
            sign=keys["sign"]["k"],
        )
        return rdir, kdir

    def _contribute(self, agg: Any, rdir: Path, keys: dict, teams: tuple = TEAMS) -> list[Path]:
        return [
            agg.contribute(
                rdir,
                team=t,
                adapter=contract_adapter(i + 1),
                weight=WEIGHTS[t],
                sign=keys["sign"][t],
                verify=keys["verify"],
            )
            for i, t in enumerate(TEAMS)
            if t in teams
        ]

    @pytest.fixture
    def finished_round(
        self, subject: Any, tmp_path: Path, contract_keys: dict, aggregator_params: Any
    ) -> dict[str, Any]:
        """One ffa round by three teams, finalized; with contribution hashes taken before."""
        rdir, kdir = self._init(subject, tmp_path, contract_keys, aggregator_params)
        files = self._contribute(subject, rdir, contract_keys)
        before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
        subject.aggregate(rdir, verify=contract_keys["verify"])
        merged = subject.finalize(rdir, key_dir=kdir, name="merged", verify=contract_keys["verify"])
        return {"dir": rdir, "keys": kdir, "before": before, "merged": merged}

    def test_round_yields_weighted_sum_of_b(self, finished_round: dict) -> None:
        import torch

        got = finished_round["merged"].tensors()
        for m in MODULES:
            want = sum(
                WEIGHTS[t] * contract_adapter(i + 1).tensors()[f"{m}.lora_B.weight"].double()
                for i, t in enumerate(TEAMS)
            )
            torch.testing.assert_close(
                got[f"{m}.lora_B.weight"].float(),
                want.to(torch.bfloat16).float(),
                atol=1e-4,
                rtol=1e-2,
            )

    def test_round_keeps_frozen_a(self, finished_round: dict) -> None:
        import torch

        got, a = finished_round["merged"].tensors(), contract_adapter(1).tensors()
        for m in MODULES:
            name = f"{m}.lora_A.weight"
            assert torch.equal(got[name].float(), a[name].to(torch.bfloat16).float())

    def test_merged_differs_from_every_single_team(self, finished_round: dict) -> None:
        got = finished_round["merged"].tensors()
        name = f"{MODULES[0]}.lora_B.weight"
        for i, _ in enumerate(TEAMS):
            single = contract_adapter(i + 1).tensors()[name].float()
            assert (got[name].float() - single).abs().max() > 1e-3

    def test_aggregate_leaves_contributions_byte_identical(self, finished_round: dict) -> None:
        after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in finished_round["before"]}
        assert after == finished_round["before"]

    def test_round_dir_holds_no_secret_key_bytes(self, finished_round: dict) -> None:
        keys = finished_round["keys"].iterdir()
        secrets = [p.read_bytes() for p in keys if p.stat().st_size > 64]
        shared = [p.read_bytes() for p in finished_round["dir"].rglob("*") if p.is_file()]
        assert not any(secret in blob for secret in secrets for blob in shared)

    def test_refuses_team_outside_round(
        self, subject: Any, tmp_path: Path, contract_keys: dict, aggregator_params: Any
    ) -> None:
        rdir, _ = self._init(subject, tmp_path, contract_keys, aggregator_params)
        with pytest.raises(HubError, match="not part of round r1"):
            subject.contribute(
                rdir,
                team="k",
                adapter=contract_adapter(9),
                weight=1.0,
                sign=contract_keys["sign"]["k"],
            )

    def test_refuses_second_contribution_from_same_team(
        self, subject: Any, tmp_path: Path, contract_keys: dict, aggregator_params: Any
    ) -> None:
        rdir, _ = self._init(subject, tmp_path, contract_keys, aggregator_params)
        self._contribute(subject, rdir, contract_keys, teams=("a",))
        with pytest.raises(HubError, match="already contributed"):
            self._contribute(subject, rdir, contract_keys, teams=("a",))

    def test_aggregate_refuses_unsigned_contribution(
        self, subject: Any, tmp_path: Path, contract_keys: dict, aggregator_params: Any
    ) -> None:
        rdir, _ = self._init(subject, tmp_path, contract_keys, aggregator_params)
        self._contribute(subject, rdir, contract_keys, teams=("a", "b"))
        subject.contribute(rdir, team="c", adapter=contract_adapter(3), weight=0.2, sign=None)
        with pytest.raises(HubError, match="unsigned"):
            subject.aggregate(rdir, verify=contract_keys["verify"])

    def test_aggregate_refuses_missing_team(
        self, subject: Any, tmp_path: Path, contract_keys: dict, aggregator_params: Any
    ) -> None:
        rdir, _ = self._init(subject, tmp_path, contract_keys, aggregator_params)
        self._contribute(subject, rdir, contract_keys, teams=("a", "b"))
        with pytest.raises(HubError, match="missing contributions from c"):
            subject.aggregate(rdir, verify=contract_keys["verify"])
