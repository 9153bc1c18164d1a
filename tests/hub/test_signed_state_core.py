"""Signed sharing kept by the core for a backend that is only a store (hub.sharing).

The example backend docs/examples/qlora-hub-dirstore offers a record store,
so the core keeps owner-signed name records there. Each test is an attack by
someone who can write the shared folder (another team, in its own home):
edited read lists, owner rows, planted versions, swapped bytes, symbolic
links, and a name deleted and re-claimed, seen from a home that never read it.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from hub import teams
from hub.adapters import Adapters
from hub.errors import AccessError, IntegrityError, UnknownNameError, ValidationError
from hub.testing.storage import sample_adapter
from hub.types import AdapterRef

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "qlora-hub-dirstore"
sys.path.insert(0, str(EXAMPLE))
from qlora_hub_dirstore import DirStore  # noqa: E402

TEAMS = ("alpha", "beta", "gamma")


@pytest.fixture
def world(tmp_path: Path):
    """alpha, beta and gamma in their own homes, trusting one another, over one shared folder:
    ``(root, homes, open_as)``; ``open_as(team, home=None)`` is the core over that folder."""
    root = tmp_path / "shared"
    homes = {t: tmp_path / t for t in TEAMS}
    for t, h in homes.items():
        teams.create_team(h, t, passphrase=None)
    for t, h in homes.items():
        for other in TEAMS:
            if other != t:
                teams.trust(h, teams.export_public(homes[other], other))

    def open_as(team: str, home: Path | None = None) -> Adapters:
        home = home or homes[team]
        return Adapters(None, DirStore(root, home=home), team=team)

    return root, homes, open_as


def _record(root: Path, name: str, version: int) -> Path:
    return root / name / str(version) / "record.json"


def _edit(path: Path, **changes) -> None:
    rec = json.loads(path.read_bytes())
    for key, value in changes.items():
        rec[key] = value if not isinstance(value, dict) else {**rec.get(key, {}), **value}
    path.write_text(json.dumps(rec))


def test_an_injected_read_grant_lets_no_team_read(world):
    root, _, open_as = world
    ref = open_as("alpha").push(sample_adapter("upper", 1))
    _edit(_record(root, "upper", 1), readers={"beta": "active"})
    beta = open_as("beta")
    assert beta.list() == []
    with pytest.raises(UnknownNameError):
        beta.pull(ref)


def test_a_revoked_team_written_back_into_the_read_list_reads_nothing_new(world):
    root, _, open_as = world
    alpha = open_as("alpha")
    alpha.share(alpha.push(sample_adapter("upper", 1)), with_team="beta")
    alpha.revoke(AdapterRef("upper"), from_team="beta")
    _edit(_record(root, "upper", 1), readers={"beta": "active"})  # the next push copies it
    nxt = alpha.push(sample_adapter("upper", 2))
    beta = open_as("beta")
    with pytest.raises(UnknownNameError):  # never shared with beta: not even named
        beta.pull(nxt)
    with pytest.raises(AccessError, match="revoked"):
        beta.pull(AdapterRef("upper"))
    assert beta.list() == []
    assert alpha.show(nxt)["readers"] == {"alpha": "active"}


def test_an_edited_owner_row_does_not_let_another_team_publish(world):
    root, _, open_as = world
    open_as("alpha").push(sample_adapter("upper", 1))
    (root / "upper" / "name.json").write_text(json.dumps({"owner": "beta", "last_version": 1}))
    with pytest.raises(AccessError, match="belongs to team 'alpha' .its signed name record"):
        open_as("beta").push(sample_adapter("upper", 666), share_with=["alpha"])
    assert [(r.name, r.version, r.team) for r in open_as("alpha").list()] == [("upper", 1, "alpha")]


def test_a_planted_version_is_never_served(world):
    """beta copies a version folder with its own weights in as upper@2, readers and all."""
    root, _, open_as = world
    alpha = open_as("alpha")
    first = sample_adapter("upper", 1)
    alpha.share(alpha.push(first), with_team="beta")
    planted = root / "upper" / "2"
    shutil.copytree(root / "upper" / "1", planted)
    evil = sample_adapter("upper", 666).files["adapter_model.safetensors"]
    (planted / "adapter_model.safetensors").write_bytes(evil)
    _edit(planted / "record.json", version=2)
    for team in ("alpha", "beta"):
        got = open_as(team).pull(AdapterRef("upper"))
        assert (got.version, got.files) == (1, first.files)
        with pytest.raises(UnknownNameError):
            open_as(team).pull(AdapterRef("upper", 2))


def test_swapped_bytes_with_a_matching_unsigned_hash_are_refused(world):
    root, _, open_as = world
    ref = open_as("alpha").push(sample_adapter("upper", 1))
    evil = sample_adapter("upper", 666).files["adapter_model.safetensors"]
    (root / "upper" / "1" / "adapter_model.safetensors").write_bytes(evil)
    import hashlib

    _edit(
        _record(root, "upper", 1),
        files={"adapter_model.safetensors": hashlib.sha256(evil).hexdigest()},
    )  # the backend's own check passes
    with pytest.raises(IntegrityError, match="does not match what its owner 'alpha' signed"):
        open_as("alpha").pull(ref)


def test_sharing_state_survives_a_deleted_mirror(world):
    """The backend's read lists are a mirror: deleting record.json grants or hides nothing."""
    root, _, open_as = world
    alpha = open_as("alpha")
    r1 = alpha.push(sample_adapter("upper", 1))
    alpha.push(sample_adapter("upper", 2))
    alpha.share(r1, with_team="beta")
    assert [r.version for r in open_as("beta").list()] == [1]
    with pytest.raises(UnknownNameError):
        open_as("beta").pull(AdapterRef("upper", 2))


def test_a_symlinked_record_folder_is_refused(world, tmp_path):
    root, _, open_as = world
    open_as("alpha").push(sample_adapter("upper", 1))
    names = root / ".records" / "names"
    elsewhere = tmp_path / "elsewhere"
    shutil.move(names, elsewhere)
    names.symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(IntegrityError, match="not a plain folder"):
        open_as("alpha", home=world[1]["gamma"]).pull(AdapterRef("alpha/upper"))


def _reclaim(root: Path, open_as) -> None:
    """beta deletes every trace of alpha's upper and publishes its own, shared with all."""
    for sub in ("names", "manifests"):
        shutil.rmtree(root / ".records" / sub / "upper")
    shutil.rmtree(root / "upper")
    open_as("beta").push(sample_adapter("upper", 666), share_with=["alpha", "gamma"])


def test_a_reclaimed_name_is_refused_when_the_owner_is_named(world):
    """A fresh home (gamma's, never read upper) asks for alpha/upper: beta's is not served."""
    root, _, open_as = world
    alpha = open_as("alpha")
    alpha.share(alpha.push(sample_adapter("upper", 1)), with_team="gamma")
    _reclaim(root, open_as)
    gamma = open_as("gamma")
    with pytest.raises(UnknownNameError, match="no adapter alpha/upper: 'upper' is owned by"):
        gamma.pull(AdapterRef.parse("alpha/upper@latest"))
    with pytest.raises(UnknownNameError, match="no adapter alpha/upper"):
        gamma.show(AdapterRef.parse("alpha/upper"))
    # the home that read it before refuses the replaced name outright (its pin)
    with pytest.raises(IntegrityError, match="rolled back or replaced"):
        alpha.pull(AdapterRef("upper"))


def test_a_qualified_ref_reads_the_owners_version(world):
    root, _, open_as = world
    alpha = open_as("alpha")
    adapter = sample_adapter("upper", 1)
    alpha.share(alpha.push(adapter), with_team="gamma")
    got = open_as("gamma").pull(AdapterRef.parse("alpha/upper@1"))
    assert (got.name, got.version, got.files) == ("upper", 1, adapter.files)
    assert got.manifest["publisher"] == "alpha"


def test_qualified_changes_are_the_owners_only(world):
    _, _, open_as = world
    alpha = open_as("alpha")
    alpha.share(alpha.push(sample_adapter("upper", 1)), with_team="beta")
    with pytest.raises(AccessError, match="alpha/upper belongs to team 'alpha'"):
        open_as("beta").delete(AdapterRef.parse("alpha/upper"))
    with pytest.raises(AccessError, match="beta/upper belongs to team 'beta'"):
        alpha.push(sample_adapter("beta/upper", 2))
    assert alpha.push(sample_adapter("alpha/upper", 2)) == AdapterRef("upper", 2)
    with pytest.raises(ValidationError):
        alpha.pull(AdapterRef.parse("alpha/up/per"))


def test_a_team_without_keys_stores_nothing(world, tmp_path):
    root, _, open_as = world
    keyless = tmp_path / "keyless"
    keyless.mkdir()
    with pytest.raises(UnknownNameError, match="no keys for team 'alpha'"):
        open_as("alpha", home=keyless).push(sample_adapter("upper", 1))
    assert not (root / "upper").exists()


def test_cli_pulls_an_owner_qualified_ref(qlora_cli, tmp_path):
    import qlora_hub_dirstore

    plugins = [("dirstore", qlora_hub_dirstore)]
    config = tmp_path / "dirstore.toml"
    config.write_text('[hub]\nstorage = "dirstore"\n')
    adapter_dir = tmp_path / "adapter"
    adapter_dir.mkdir()
    for fname, data in sample_adapter("upper").files.items():
        (adapter_dir / fname).write_bytes(data)

    def cli(*args):
        return qlora_cli("--config", str(config), *args, "--team", "alpha", plugins=plugins)

    assert qlora_cli("team", "create", "alpha", "--no-passphrase", plugins=plugins).exit_code == 0
    push = cli("adapters", "push", str(adapter_dir), "--name", "upper")
    assert push.exit_code == 0, push.err
    res = cli("adapters", "pull", "alpha/upper@1")
    assert res.exit_code == 0, res.err
    assert res.out.startswith("upper@1 by alpha: ") and "verified" in res.out
    res = cli("adapters", "pull", "beta/upper")
    assert res.exit_code == 2 and res.err.startswith("error: no adapter beta/upper: ")


def test_a_fifo_planted_as_a_record_is_refused_without_hanging(world):
    import os

    root, _, open_as = world
    alpha = open_as("alpha")
    alpha.share(alpha.push(sample_adapter("upper", 1)), with_team="gamma")
    record = root / ".records" / "names" / "upper" / "00000001"
    record.unlink()
    os.mkfifo(record)
    for team in ("alpha", "gamma"):  # the owner's home (pinned) and a fresh one
        with pytest.raises(
            IntegrityError, match="record names/upper/00000001 is not a regular file"
        ):
            open_as(team).pull(AdapterRef.parse("alpha/upper"))
    assert open_as("gamma").list() == []


def test_a_revoke_that_lands_during_a_push_holds_for_that_push(world):
    """Another process of the owner revokes beta while this one stores version 2: the
    publish record, signed after the revoke, does not name beta."""
    root, homes, open_as = world
    alpha = open_as("alpha")
    alpha.share(alpha.push(sample_adapter("upper", 1)), with_team="beta")

    class RevokedMeanwhile(DirStore):
        def push(self, adapter, **kw):
            ref = super().push(adapter, **kw)
            open_as("alpha").revoke(AdapterRef("upper"), from_team="beta")
            return ref

    racing = Adapters(None, RevokedMeanwhile(root, home=homes["alpha"]), team="alpha")
    v2 = racing.push(sample_adapter("upper", 2))
    assert alpha.show(v2)["readers"] == {"alpha": "active"}
    with pytest.raises(UnknownNameError):
        open_as("beta").pull(v2)
