"""The storage contract suite catches the bug classes it promises to.

Each deliberately buggy backend (or host path) below differs from the example
backend in docs/examples/qlora-hub-dirstore by one bug; the suite runs against
each in a child pytest session, and the tests named for that bug must fail
while the correct example passes everything.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "qlora-hub-dirstore"

BUGGY = textwrap.dedent(
    '''
    import sys, threading, time
    sys.path.insert(0, {example!r})
    import pytest
    from qlora_hub_dirstore import DirStore
    from hub.adapters import Adapters
    from hub.testing import StorageBackendContract
    from hub.types import AdapterRef


    class StaleLatest(DirStore):
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


    class RevokedComesBack(DirStore):
        """A push copies every earlier reader, revoked ones included, as active."""
        def push(self, adapter, *, team=None, metadata=None, share_with=()):
            before = set()
            for v in self._versions(adapter.name):
                before |= set(self._record(adapter.name, v)["readers"])
            return super().push(adapter, team=team, metadata=metadata,
                                share_with=[*share_with, *(before - {{team}})])


    class ShareOneSharesAll(DirStore):
        """Sharing one version shares every version."""
        def share(self, ref, *, team=None, with_team):
            return super().share(AdapterRef(ref.name), team=team, with_team=with_team)


    class NoWriteLock(DirStore):
        """No lock: two pushes read the same last version and collide."""
        def _locked(self):
            import contextlib
            return contextlib.nullcontext()
        def _read_json(self, path):
            got = super()._read_json(path)
            if path.name == "name.json" and threading.active_count() > 1:
                time.sleep(0.05)  # widen the race a missing lock leaves open
            return got


    class FiresItsOwnHooks(DirStore):
        """An old-style backend that fires adapter_published itself (the host fires it too)."""
        def __init__(self, root, *, hub=None, **k):
            super().__init__(root, **k)
            self.hub = hub
        def push(self, adapter, **kw):
            ref = super().push(adapter, **kw)
            self.hub.pm.hook.adapter_published(ref=ref, team=kw["team"], manifest={{}})
            return ref


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
        backend = DirStore
        @pytest.fixture
        def storage_backend(self, tmp_path, contract_hub):
            return self.backend(tmp_path / "store", hub=contract_hub)


    class TestCorrect(Base):
        pass

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
}


@pytest.fixture(scope="module")
def failures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Class name -> names of its failed tests, from one child pytest run over every class."""
    import subprocess
    import sys

    d = tmp_path_factory.mktemp("contract-bugs")
    (d / "test_bugs.py").write_text(BUGGY.format(example=str(EXAMPLE)))
    # every test for the correct example; the bug-class tests for the buggy ones
    select = " or ".join(["TestCorrect", *sorted({t for ts in CAUGHT_BY.values() for t in ts})])
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


@pytest.mark.parametrize("cls", sorted(CAUGHT_BY))
def test_each_bug_is_caught_by_the_test_named_for_it(failures, cls):
    assert failures.get(cls, set()) == CAUGHT_BY[cls]
