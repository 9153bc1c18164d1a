"""Contract suite for :class:`hub.types.StorageBackend` plugins.

Subclass :class:`StorageBackendContract` and provide a ``storage_backend``
fixture: a fresh backend whose default acting team is ``alpha``, where the
teams ``alpha``, ``beta`` and ``gamma`` can all act (keys available) and
trust one another. :func:`sample_adapter` builds small valid LoRA adapters.

The suite runs the backend behind a real hub, as ``qlora-hub`` does: a
:class:`hub.plugins.Hub` with a recording plugin (``validate_adapter``,
``adapter_published``, ``adapter_loaded``) and the core's adapter lifecycle
(:class:`hub.adapters.Adapters`) around the backend. Besides round trips,
versions, sharing and names it catches: a stale ``latest`` served from a
cache, a revoked team reading the next version, sharing one version sharing
every version, policy hooks not run on store or load, lifecycle hooks not
fired exactly once, and concurrent pushes without a write lock.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from hub import hookimpl
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


def contract_home(home: Path, teams: tuple[str, ...] = ("alpha", "beta", "gamma")) -> Path:
    """A home where ``teams`` hold keys (no passphrase) and trust one another.

    For a backend that lets the core keep signed sharing records (a
    ``records`` store, see :mod:`hub.sharing`): the core signs with these keys.
    """
    from hub.teams import create_team

    for team in teams:
        create_team(home, team, passphrase=None)
    return home


class ContractRecorder:
    """A plugin recording lifecycle hooks and vetoing adapters named in ``veto``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, str]] = []
        self.veto: set[str] = set()
        self.lock = threading.Lock()

    @hookimpl
    def validate_adapter(self, adapter: AdapterPayload) -> list[str]:
        with self.lock:
            self.events.append(("validate", adapter.name, "", ""))
        return ["contract veto"] if adapter.name in self.veto else []

    @hookimpl
    def adapter_published(self, ref: AdapterRef, team: str, manifest: dict) -> None:
        with self.lock:
            self.events.append(("published", str(ref), team, manifest.get("publisher", "")))

    @hookimpl
    def adapter_loaded(self, ref: AdapterRef, team: str, where: str) -> None:
        with self.lock:
            self.events.append(("loaded", str(ref), team, where))

    def fired(self, kind: str) -> list[tuple[str, str, str, str]]:
        return [e for e in self.events if e[0] == kind]


class StorageBackendContract(ProtocolContract):
    """Conformance and behaviour every storage backend must show (see module docstring)."""

    protocol, kind, fixture_name = StorageBackend, "storage", "storage_backend"

    @pytest.fixture
    def contract_recorder(self) -> ContractRecorder:
        """The recording plugin registered in :meth:`contract_hub`."""
        return ContractRecorder()

    @pytest.fixture
    def contract_hub(self, contract_recorder: ContractRecorder) -> Any:
        """A real hub holding only the recording plugin (no other installed plugins)."""
        from hub.plugins import Hub

        hub = Hub(builtins=False, entry_points=False, extra=[("contract", contract_recorder)])
        yield hub
        hub.pm.unregister(contract_recorder)

    def open_contract_store(self, hub: Any, backend: Any) -> Any:
        """How the suite reaches the backend: the core's lifecycle, as ``open_store`` does."""
        from hub.adapters import Adapters

        return Adapters(hub, backend, team="alpha")

    @pytest.fixture
    def contract_store(self, subject: Any, contract_hub: Any) -> Any:
        """The backend under test behind the real hub."""
        return self.open_contract_store(contract_hub, subject)

    def test_push_then_pull_returns_identical_bytes(self, contract_store: Any) -> None:
        adapter = sample_adapter("upper")
        ref = contract_store.push(adapter, team="alpha")
        got = contract_store.pull(ref, team="alpha")
        assert (got.name, got.version, got.files) == ("upper", ref.version, adapter.files)

    def test_versions_increase_and_never_overwrite(self, contract_store: Any) -> None:
        first, second = sample_adapter("upper", 1), sample_adapter("upper", 2)
        r1 = contract_store.push(first, team="alpha")
        r2 = contract_store.push(second, team="alpha")
        assert r2.version == r1.version + 1
        assert contract_store.pull(r1, team="alpha").files == first.files
        assert contract_store.pull(r2, team="alpha").files == second.files

    def test_unversioned_pull_returns_latest(self, contract_store: Any) -> None:
        contract_store.push(sample_adapter("upper", 1), team="alpha")
        latest = sample_adapter("upper", 2)
        contract_store.push(latest, team="alpha")
        got = contract_store.pull(AdapterRef.parse("upper@latest"), team="alpha")
        assert (got.version, got.files) == (2, latest.files)

    def test_list_shows_each_version_with_publisher(self, contract_store: Any) -> None:
        contract_store.push(sample_adapter("upper", 1), team="alpha")
        contract_store.push(sample_adapter("upper", 2), team="alpha")
        rows = [(r.name, r.version, r.team) for r in contract_store.list(team="alpha")]
        assert rows == [("upper", 1, "alpha"), ("upper", 2, "alpha")]

    def test_other_team_sees_nothing_unshared(self, contract_store: Any) -> None:
        ref = contract_store.push(sample_adapter("upper"), team="alpha")
        assert contract_store.list(team="beta") == []
        with pytest.raises(UnknownNameError):
            contract_store.pull(ref, team="beta")

    def test_share_lets_other_team_pull(self, contract_store: Any) -> None:
        adapter = sample_adapter("upper")
        ref = contract_store.push(adapter, team="alpha")
        contract_store.share(ref, team="alpha", with_team="beta")
        assert contract_store.pull(ref, team="beta").files == adapter.files
        assert [r.version for r in contract_store.list(team="beta")] == [ref.version]

    def test_revoke_stops_other_team(self, contract_store: Any) -> None:
        ref = contract_store.push(sample_adapter("upper"), team="alpha")
        contract_store.share(ref, team="alpha", with_team="beta")
        newest = contract_store.revoke(AdapterRef("upper"), team="alpha", from_team="beta")
        with pytest.raises(AccessError):
            contract_store.pull(ref, team="beta")
        assert contract_store.list(team="beta") == []
        assert contract_store.pull(newest, team="alpha").files == sample_adapter("upper").files

    def test_only_owner_may_share(self, contract_store: Any) -> None:
        ref = contract_store.push(sample_adapter("upper"), team="alpha")
        contract_store.share(ref, team="alpha", with_team="beta")
        with pytest.raises(AccessError):
            contract_store.share(ref, team="beta", with_team="gamma")

    def test_other_team_cannot_push_to_owned_name(self, contract_store: Any) -> None:
        contract_store.push(sample_adapter("upper"), team="alpha")
        with pytest.raises(AccessError):
            contract_store.push(sample_adapter("upper", 1), team="beta")

    def test_delete_removes_version_and_number_is_not_reused(self, contract_store: Any) -> None:
        contract_store.push(sample_adapter("upper", 1), team="alpha")
        r2 = contract_store.push(sample_adapter("upper", 2), team="alpha")
        contract_store.delete(r2, team="alpha")
        with pytest.raises(UnknownNameError):
            contract_store.pull(r2, team="alpha")
        assert contract_store.push(sample_adapter("upper", 3), team="alpha").version == 3

    def test_delete_all_versions(self, contract_store: Any) -> None:
        contract_store.push(sample_adapter("upper", 1), team="alpha")
        contract_store.push(sample_adapter("upper", 2), team="alpha")
        contract_store.delete(AdapterRef("upper"), team="alpha")
        assert contract_store.list(team="alpha") == []

    def test_missing_version_is_unknown(self, contract_store: Any) -> None:
        contract_store.push(sample_adapter("upper"), team="alpha")
        with pytest.raises(UnknownNameError):
            contract_store.pull(AdapterRef("upper", 9), team="alpha")

    @pytest.mark.parametrize(
        "bad",
        ["../x", "/etc/passwd", "a/b/c", "nul\x00x", "x" * 65, "upp\u0435r", ".hidden", ""]
        + ["upper\n", "a..b", "C:\\x", "upper\u200b"],
    )
    def test_bad_names_are_rejected(self, contract_store: Any, bad: str) -> None:
        with pytest.raises(ValidationError):
            contract_store.push(sample_adapter(bad), team="alpha")
        with pytest.raises(ValidationError):
            contract_store.pull(AdapterRef(bad), team="alpha")

    def test_owner_qualified_ref_reads_only_the_owners_version(self, contract_store: Any) -> None:
        adapter = sample_adapter("upper")
        ref = contract_store.push(adapter, team="alpha", share_with=["beta"])
        got = contract_store.pull(AdapterRef.parse(f"alpha/upper@{ref.version}"), team="beta")
        assert (got.name, got.version, got.files) == ("upper", ref.version, adapter.files)
        with pytest.raises(UnknownNameError, match="no adapter gamma/upper"):
            contract_store.pull(AdapterRef.parse("gamma/upper"), team="beta")

    def test_case_collision_is_rejected(self, contract_store: Any) -> None:
        contract_store.push(sample_adapter("upper"), team="alpha")
        with pytest.raises(ValidationError, match="collides"):
            contract_store.push(sample_adapter("UPPER"), team="alpha")

    def test_invalid_adapter_is_refused_and_nothing_stored(self, contract_store: Any) -> None:
        bad = sample_adapter("upper")
        bad.files[AdapterPayload.WEIGHTS] = b"not safetensors"
        with pytest.raises(ValidationError):
            contract_store.push(bad, team="alpha")
        assert contract_store.list(team="alpha") == []

    def test_errors_are_hub_errors(self, contract_store: Any) -> None:
        with pytest.raises(HubError):
            contract_store.pull(AdapterRef("nothing"), team="alpha")

    # -- the bug classes a real hub catches ------------------------------------------------
    def test_latest_is_never_stale_after_a_push(self, contract_store: Any) -> None:
        contract_store.push(sample_adapter("upper", 1), team="alpha")
        assert contract_store.pull(AdapterRef("upper"), team="alpha").version == 1
        assert [r.version for r in contract_store.list(team="alpha")] == [1]
        newer = sample_adapter("upper", 2)
        contract_store.push(newer, team="alpha")
        got = contract_store.pull(AdapterRef("upper"), team="alpha")
        assert (got.version, got.files) == (2, newer.files)
        assert [r.version for r in contract_store.list(team="alpha")] == [1, 2]

    def test_revoked_team_does_not_read_the_next_push(self, contract_store: Any) -> None:
        ref = contract_store.push(sample_adapter("upper", 1), team="alpha")
        contract_store.share(ref, team="alpha", with_team="beta")
        contract_store.revoke(AdapterRef("upper"), team="alpha", from_team="beta")
        nxt = contract_store.push(sample_adapter("upper", 2), team="alpha")
        with pytest.raises((AccessError, UnknownNameError)):
            contract_store.pull(nxt, team="beta")
        with pytest.raises((AccessError, UnknownNameError)):
            contract_store.pull(AdapterRef("upper"), team="beta")
        assert contract_store.list(team="beta") == []

    def test_sharing_one_version_shares_only_that_version(self, contract_store: Any) -> None:
        r1 = contract_store.push(sample_adapter("upper", 1), team="alpha")
        r2 = contract_store.push(sample_adapter("upper", 2), team="alpha")
        contract_store.share(r1, team="alpha", with_team="beta")
        assert contract_store.pull(r1, team="beta").files == sample_adapter("upper", 1).files
        with pytest.raises((AccessError, UnknownNameError)):
            contract_store.pull(r2, team="beta")
        assert contract_store.pull(AdapterRef("upper"), team="beta").version == r1.version
        assert [r.version for r in contract_store.list(team="beta")] == [r1.version]

    def test_policy_veto_refuses_push_and_stores_nothing(
        self, contract_store: Any, contract_recorder: ContractRecorder
    ) -> None:
        contract_recorder.veto.add("upper")
        with pytest.raises(ValidationError, match="contract veto"):
            contract_store.push(sample_adapter("upper"), team="alpha")
        assert contract_store.list(team="alpha") == []
        assert contract_recorder.fired("published") == []

    def test_policy_runs_on_load_too(
        self, contract_store: Any, contract_recorder: ContractRecorder
    ) -> None:
        ref = contract_store.push(sample_adapter("upper"), team="alpha")
        contract_recorder.veto.add("upper")  # the policy changed after the push
        with pytest.raises(ValidationError, match="contract veto"):
            contract_store.pull(ref, team="alpha")
        assert contract_recorder.fired("loaded") == []

    def test_lifecycle_hooks_fire_exactly_once(
        self, contract_store: Any, contract_recorder: ContractRecorder
    ) -> None:
        ref = contract_store.push(sample_adapter("upper"), team="alpha")
        contract_store.share(ref, team="alpha", with_team="beta")
        contract_store.pull(ref, team="beta", where="server")
        assert contract_recorder.fired("published") == [
            ("published", f"upper@{ref.version}", "alpha", "alpha")
        ]
        assert contract_recorder.fired("loaded") == [
            ("loaded", f"upper@{ref.version}", "beta", "server")
        ]

    def test_concurrent_pushes_get_distinct_versions(self, contract_store: Any) -> None:
        adapters = [sample_adapter("upper", i) for i in range(6)]
        refs: list[AdapterRef] = []
        errors: list[BaseException] = []

        def push(adapter: AdapterPayload) -> None:
            try:
                refs.append(contract_store.push(adapter, team="alpha"))
            except BaseException as exc:  # collected: a thread must not swallow it
                errors.append(exc)

        threads = [threading.Thread(target=push, args=(a,)) for a in adapters]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert sorted(r.version for r in refs) == list(range(1, len(adapters) + 1))
        stored = {contract_store.pull(r, team="alpha").files[AdapterPayload.WEIGHTS] for r in refs}
        assert stored == {a.files[AdapterPayload.WEIGHTS] for a in adapters}
