"""The storage contract suite catches the bug classes it promises to.

Each deliberately buggy backend (or host path) below differs from the example
backend in docs/examples/qlora-hub-dirstore by one bug; the suite runs against
each in a child pytest session, and the tests named for that bug must fail
while the correct example passes everything, with and without the core's
signed sharing. The buggy backends offer no record store (``records = None``),
so their own read lists decide what is served: that is what the suite checks
of a backend (with a record store the core's signed records decide, and
several of these bugs become harmless).
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "qlora-hub-dirstore"

BUGGY = textwrap.dedent(
    '''
    import shutil, sys, threading, time
    sys.path.insert(0, {example!r})
    import pytest
    import qlora_hub_dirstore
    from qlora_hub_dirstore import DirStore
    from hub.adapters import Adapters
    from hub.testing import StorageBackendContract
    from hub.testing.storage import contract_home
    from hub.types import AdapterRef


    class Unsigned(DirStore):
        """The example without a record store: its own read lists decide."""
        records = None


    class StaleLatest(Unsigned):
        """Caches the latest version per name and never drops it on push."""
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.cache = {{}}
        def pull(self, ref, *, team=None, where="cli"):
            if ref.version is None and (ref.name, team) in self.cache:
                ref = AdapterRef(ref.name, self.cache[ref.name, team])
            got = super().pull(ref, team=team, where=where)
            self.cache.setdefault((ref.name, team), got.version)
            return got


    class RevokedComesBack(Unsigned):
        """A push copies every earlier reader, revoked ones included, as active."""
        def push(self, adapter, *, team=None, metadata=None, share_with=()):
            before = set()
            for v in self._versions(adapter.name):
                before |= set(self._record(adapter.name, v)["readers"])
            return super().push(adapter, team=team, metadata=metadata,
                                share_with=[*share_with, *(before - {{team}})])


    class ShareOneSharesAll(Unsigned):
        """Sharing one version shares every version."""
        def share(self, ref, *, team=None, with_team):
            return super().share(AdapterRef(ref.name), team=team, with_team=with_team)


    class NoWriteLock(Unsigned):
        """No lock: two pushes read the same last version and collide."""
        def _locked(self):
            import contextlib
            return contextlib.nullcontext()
        def _read_json(self, path):
            got = super()._read_json(path)
            if path.name == "name.json" and threading.active_count() > 1:
                time.sleep(0.05)  # widen the race a missing lock leaves open
            return got


    class FiresItsOwnHooks(Unsigned):
        """An old-style backend that fires adapter_published itself (the host fires it too)."""
        def __init__(self, root, *, hub=None, **k):
            super().__init__(root, **k)
            self.hub = hub
        def push(self, adapter, **kw):
            ref = super().push(adapter, **kw)
            self.hub.pm.hook.adapter_published(ref=ref, team=kw["team"], manifest={{}})
            return ref


    class ReadsIgnoreGrants(Unsigned):
        """Pull reads as the owner: the reader's grants are never checked."""
        def pull(self, ref, *, team=None, where="cli"):
            info = self._read_json(self.root / ref.name / "name.json")
            return super().pull(ref, team=info["owner"] if info else team, where=where)


    class Overwrites(Unsigned):
        """Every push is version 1, replacing what was there."""
        def _read_json(self, path):
            got = super()._read_json(path)
            return {{**got, "last_version": 0}} if got and path.name == "name.json" else got
        def push(self, adapter, **kw):
            shutil.rmtree(self.root / adapter.name / "1", ignore_errors=True)
            return super().push(adapter, **kw)


    class ReusesNumbers(Unsigned):
        """The next number is the highest stored one plus one: a deleted number comes back."""
        def _read_json(self, path):
            got = super()._read_json(path)
            if got and path.name == "name.json":
                got = {{**got, "last_version": max(self._versions(path.parent.name), default=0)}}
            return got


    class AnyonePushes(Unsigned):
        """No owner check on push: any team publishes under any name."""
        def push(self, adapter, *, team=None, **kw):
            self.pusher = team
            return super().push(adapter, team=team, **kw)
        def _read_json(self, path):
            got = super()._read_json(path)
            if got and path.name == "name.json" and getattr(self, "pusher", None):
                got = {{**got, "owner": self.pusher}}
            return got


    case_blind = threading.local()
    real_key = qlora_hub_dirstore.collision_key
    qlora_hub_dirstore.collision_key = lambda n: n if getattr(case_blind, "on", 0) else real_key(n)


    class NoCaseCheck(Unsigned):
        """Names that differ only by case are two names."""
        def push(self, adapter, **kw):
            case_blind.on = 1
            try:
                return super().push(adapter, **kw)
            finally:
                case_blind.on = 0


    class RevokeDoesNothing(Unsigned):
        """Revoke answers the newest version and changes nothing."""
        def revoke(self, ref, *, team=None, from_team):
            return AdapterRef(ref.name, self._versions(ref.name)[-1])


    class SkipsPolicy(Adapters):
        """A host path that stores and loads without the validate_adapter hooks."""
        def validate(self, adapter):
            from hub.validation import check_adapter
            check_adapter(adapter, self.limits)


    class NeverPublishes(Adapters):
        """A host path that never fires adapter_published."""
        def _fire(self, hook, **kw):
            if hook != "adapter_published":
                super()._fire(hook, **kw)


    class Base(StorageBackendContract):
        backend = Unsigned
        @pytest.fixture
        def storage_backend(self, tmp_path, contract_hub):
            return self.backend(tmp_path / "store", hub=contract_hub)


    class TestCorrect(Base):
        pass

    class TestCorrectSigned(Base):
        @pytest.fixture
        def storage_backend(self, tmp_path, contract_hub):
            return DirStore(tmp_path / "store", hub=contract_hub, home=contract_home(tmp_path))

    class TestStaleLatest(Base):
        backend = StaleLatest

    class TestRevokedComesBack(Base):
        backend = RevokedComesBack

    class TestShareOneSharesAll(Base):
        backend = ShareOneSharesAll

    class TestNoWriteLock(Base):
        backend = NoWriteLock

    class TestFiresItsOwnHooks(Base):
        backend = FiresItsOwnHooks

    class TestReadsIgnoreGrants(Base):
        backend = ReadsIgnoreGrants

    class TestOverwrites(Base):
        backend = Overwrites

    class TestReusesNumbers(Base):
        backend = ReusesNumbers

    class TestAnyonePushes(Base):
        backend = AnyonePushes

    class TestNoCaseCheck(Base):
        backend = NoCaseCheck

    class TestRevokeDoesNothing(Base):
        backend = RevokeDoesNothing

    class TestSkipsPolicy(Base):
        def open_contract_store(self, hub, backend):
            return SkipsPolicy(hub, backend, team="alpha")

    class TestNeverPublishes(Base):
        def open_contract_store(self, hub, backend):
            return NeverPublishes(hub, backend, team="alpha")
    '''
)

CAUGHT_BY = {
    "TestStaleLatest": {"test_latest_is_never_stale_after_a_push"},
    "TestRevokedComesBack": {"test_revoked_team_does_not_read_the_next_push"},
    "TestShareOneSharesAll": {"test_sharing_one_version_shares_only_that_version"},
    "TestNoWriteLock": {"test_concurrent_pushes_get_distinct_versions"},
    "TestFiresItsOwnHooks": {"test_lifecycle_hooks_fire_exactly_once"},
    "TestSkipsPolicy": {
        "test_policy_veto_refuses_push_and_stores_nothing",
        "test_policy_runs_on_load_too",
    },
    "TestNeverPublishes": {"test_lifecycle_hooks_fire_exactly_once"},
    "TestReadsIgnoreGrants": {
        "test_other_team_sees_nothing_unshared",
        "test_revoke_stops_other_team",
    },
    "TestOverwrites": {"test_versions_increase_and_never_overwrite"},
    "TestReusesNumbers": {"test_delete_removes_version_and_number_is_not_reused"},
    "TestAnyonePushes": {"test_other_team_cannot_push_to_owned_name"},
    "TestNoCaseCheck": {"test_case_collision_is_rejected"},
    "TestRevokeDoesNothing": {
        "test_revoke_stops_other_team",
        "test_revoked_team_does_not_read_the_next_push",
    },
}


@pytest.fixture(scope="module")
def failures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Class name -> names of its failed tests, from one child pytest run over every class."""
    import subprocess
    import sys

    d = tmp_path_factory.mktemp("contract-bugs")
    (d / "test_bugs.py").write_text(BUGGY.format(example=str(EXAMPLE)))
    # every test for the correct example; for each buggy one, the tests named for its bug
    buggy = [f"({cls} and ({' or '.join(sorted(ts))}))" for cls, ts in sorted(CAUGHT_BY.items())]
    select = " or ".join(["TestCorrect", *buggy])
    args = ["-q", "-p", "no:cacheprovider", "-rf", "-k", select, "test_bugs.py"]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *args],
        cwd=d,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out: dict[str, set[str]] = {}
    for cls, test in re.findall(r"^FAILED test_bugs\.py::(\w+)::(\w+)", proc.stdout, re.M):
        out.setdefault(cls, set()).add(test)
    assert "error" not in proc.stdout.splitlines()[-1], proc.stdout[-3000:]
    return out


def test_correct_example_passes_the_whole_suite(failures):
    assert "TestCorrect" not in failures
    assert "TestCorrectSigned" not in failures


def test_twelve_and_more_bug_classes_are_covered():
    assert len(CAUGHT_BY) >= 12


@pytest.mark.parametrize("cls", sorted(CAUGHT_BY))
def test_each_bug_is_caught_by_the_test_named_for_it(failures, cls):
    # only the tests named for each bug run on its backend: every one of them must fail
    assert failures.get(cls, set()) == CAUGHT_BY[cls]
