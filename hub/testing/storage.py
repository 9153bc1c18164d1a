"""Contract suite for :class:`hub.types.StorageBackend` plugins.

Subclass :class:`StorageBackendContract` and provide a ``storage_backend``
fixture: a fresh backend whose default acting team is ``alpha``, where the
teams ``alpha``, ``beta`` and ``gamma`` can all act (keys available) and
trust one another. :func:`sample_adapter` builds small valid LoRA adapters.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from hub.errors import AccessError, HubError, UnknownNameError, ValidationError
from hub.testing.contracts import ProtocolContract
from hub.types import AdapterPayload, AdapterRef, StorageBackend


def sample_adapter(
    name: str, seed: int = 0, *, r: int = 4, hidden: int = 64, layers: int = 2
) -> AdapterPayload:
    """A valid PEFT LoRA adapter in memory (q_proj/v_proj, float32), distinct per ``seed``."""
    import numpy as np
    from safetensors.numpy import save

    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(layers):
        for module in ("q_proj", "v_proj"):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((r, hidden), np.float32)
            tensors[f"{prefix}.lora_B.weight"] = rng.standard_normal((hidden, r), np.float32)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": r,
        "lora_alpha": 2 * r,
        "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": "embedded",
    }
    files = {
        AdapterPayload.CONFIG: json.dumps(config).encode(),
        AdapterPayload.WEIGHTS: save(tensors),
    }
    return AdapterPayload(name=name, files=files)


class StorageBackendContract(ProtocolContract):
    """Conformance and behaviour every storage backend must show (see module docstring)."""

    protocol, kind, fixture_name = StorageBackend, "storage", "storage_backend"

    def test_push_then_pull_returns_identical_bytes(self, subject: Any) -> None:
        adapter = sample_adapter("upper")
        ref = subject.push(adapter, team="alpha")
        got = subject.pull(ref, team="alpha")
        assert (got.name, got.version, got.files) == ("upper", ref.version, adapter.files)

    def test_versions_increase_and_never_overwrite(self, subject: Any) -> None:
        first, second = sample_adapter("upper", 1), sample_adapter("upper", 2)
        r1 = subject.push(first, team="alpha")
        r2 = subject.push(second, team="alpha")
        assert r2.version == r1.version + 1
        assert subject.pull(r1, team="alpha").files == first.files
        assert subject.pull(r2, team="alpha").files == second.files

    def test_unversioned_pull_returns_latest(self, subject: Any) -> None:
        subject.push(sample_adapter("upper", 1), team="alpha")
        latest = sample_adapter("upper", 2)
        subject.push(latest, team="alpha")
        got = subject.pull(AdapterRef.parse("upper@latest"), team="alpha")
        assert (got.version, got.files) == (2, latest.files)

    def test_list_shows_each_version_with_publisher(self, subject: Any) -> None:
        subject.push(sample_adapter("upper", 1), team="alpha")
        subject.push(sample_adapter("upper", 2), team="alpha")
        rows = [(r.name, r.version, r.team) for r in subject.list(team="alpha")]
        assert rows == [("upper", 1, "alpha"), ("upper", 2, "alpha")]

    def test_other_team_sees_nothing_unshared(self, subject: Any) -> None:
        ref = subject.push(sample_adapter("upper"), team="alpha")
        assert subject.list(team="beta") == []
        with pytest.raises(UnknownNameError):
            subject.pull(ref, team="beta")

    def test_share_lets_other_team_pull(self, subject: Any) -> None:
        adapter = sample_adapter("upper")
        ref = subject.push(adapter, team="alpha")
        subject.share(ref, team="alpha", with_team="beta")
        assert subject.pull(ref, team="beta").files == adapter.files
        assert [r.version for r in subject.list(team="beta")] == [ref.version]

    def test_revoke_stops_other_team(self, subject: Any) -> None:
        ref = subject.push(sample_adapter("upper"), team="alpha")
        subject.share(ref, team="alpha", with_team="beta")
        newest = subject.revoke(AdapterRef("upper"), team="alpha", from_team="beta")
        with pytest.raises(AccessError):
            subject.pull(ref, team="beta")
        assert subject.list(team="beta") == []
        assert subject.pull(newest, team="alpha").files == sample_adapter("upper").files

    def test_only_owner_may_share(self, subject: Any) -> None:
        ref = subject.push(sample_adapter("upper"), team="alpha")
        subject.share(ref, team="alpha", with_team="beta")
        with pytest.raises(AccessError):
            subject.share(ref, team="beta", with_team="gamma")

    def test_other_team_cannot_push_to_owned_name(self, subject: Any) -> None:
        subject.push(sample_adapter("upper"), team="alpha")
        with pytest.raises(AccessError):
            subject.push(sample_adapter("upper", 1), team="beta")

    def test_delete_removes_version_and_number_is_not_reused(self, subject: Any) -> None:
        subject.push(sample_adapter("upper", 1), team="alpha")
        r2 = subject.push(sample_adapter("upper", 2), team="alpha")
        subject.delete(r2, team="alpha")
        with pytest.raises(UnknownNameError):
            subject.pull(r2, team="alpha")
        assert subject.push(sample_adapter("upper", 3), team="alpha").version == 3

    def test_delete_all_versions(self, subject: Any) -> None:
        subject.push(sample_adapter("upper", 1), team="alpha")
        subject.push(sample_adapter("upper", 2), team="alpha")
        subject.delete(AdapterRef("upper"), team="alpha")
        assert subject.list(team="alpha") == []

    def test_missing_version_is_unknown(self, subject: Any) -> None:
        subject.push(sample_adapter("upper"), team="alpha")
        with pytest.raises(UnknownNameError):
            subject.pull(AdapterRef("upper", 9), team="alpha")

    @pytest.mark.parametrize(
        "bad", ["../x", "/etc/passwd", "a/b", "nul\x00x", "x" * 65, "upp\u0435r", ".hidden", ""]
    )
    def test_bad_names_are_rejected(self, subject: Any, bad: str) -> None:
        with pytest.raises(ValidationError):
            subject.push(sample_adapter(bad), team="alpha")
        with pytest.raises(ValidationError):
            subject.pull(AdapterRef(bad), team="alpha")

    def test_case_collision_is_rejected(self, subject: Any) -> None:
        subject.push(sample_adapter("upper"), team="alpha")
        with pytest.raises(ValidationError, match="collides"):
            subject.push(sample_adapter("UPPER"), team="alpha")

    def test_invalid_adapter_is_refused_and_nothing_stored(self, subject: Any) -> None:
        bad = sample_adapter("upper")
        bad.files[AdapterPayload.WEIGHTS] = b"not safetensors"
        with pytest.raises(ValidationError):
            subject.push(bad, team="alpha")
        assert subject.list(team="alpha") == []

    def test_errors_are_hub_errors(self, subject: Any) -> None:
        with pytest.raises(HubError):
            subject.pull(AdapterRef("nothing"), team="alpha")
