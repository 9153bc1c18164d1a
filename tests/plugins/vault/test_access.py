"""Teams in separate homes sharing one vault: trust, sharing, revocation, distinct errors."""

from __future__ import annotations

import pytest

from hub import teams
from hub.errors import AccessError, ConfigError, UnknownNameError, ValidationError
from hub.testing.storage import sample_adapter
from hub.types import AdapterRef
from plugins.vault.backend import Vault


def test_shared_adapter_pulls_in_the_other_home(world):
    _, _, v = world
    ref = v["alpha"].push(sample_adapter("upper"))
    v["alpha"].share(ref, with_team="beta")
    assert v["beta"].pull(ref).files == sample_adapter("upper").files


def test_share_leaves_payload_and_manifest_untouched(world):
    _, _, v = world
    ref = v["alpha"].push(sample_adapter("upper"))
    with v["alpha"].index.read() as db:
        oid = v["alpha"].index.version_row(db, "upper", 1)["object_id"]
    before = [v["alpha"].blobs.get(f"objects/{oid}/{p}") for p in ("payload", "manifest")]
    v["alpha"].share(ref, with_team="beta")
    after = [v["alpha"].blobs.get(f"objects/{oid}/{p}") for p in ("payload", "manifest")]
    assert before == after
    assert v["alpha"].blobs.exists(f"objects/{oid}/keys/beta")


def test_sharing_with_an_untrusted_team_is_refused(world):
    _, _, v = world
    ref = v["alpha"].push(sample_adapter("upper"))
    with pytest.raises(AccessError, match="team 'gamma' is not in the trust store"):
        v["alpha"].share(ref, with_team="gamma")


def test_untrusted_publisher_is_a_distinct_error(world, tmp_path):
    root, homes, v = world
    ref = v["alpha"].push(sample_adapter("upper"))
    v["alpha"].share(ref, with_team="beta")
    (homes["beta"] / "trust" / "alpha.json").unlink()
    with pytest.raises(AccessError, match="team 'alpha' is not in the trust store"):
        Vault(root, home=homes["beta"], team="beta").pull(ref)


def test_wrong_team_key_is_a_distinct_error(world, tmp_path):
    root, homes, v = world
    ref = v["alpha"].push(sample_adapter("upper"))
    v["alpha"].share(ref, with_team="beta")
    impostor = tmp_path / "beta-rekeyed"
    teams.create_team(impostor, "beta", passphrase=None)
    teams.trust(impostor, teams.export_public(homes["alpha"], "alpha"))
    with pytest.raises(AccessError, match="wrapped for another key of team 'beta'"):
        Vault(root, home=impostor, team="beta").pull(ref)


def test_revoked_team_is_a_distinct_error(world):
    _, _, v = world
    ref = v["alpha"].push(sample_adapter("upper"))
    v["alpha"].share(ref, with_team="beta")
    v["alpha"].revoke(AdapterRef("upper"), from_team="beta")
    with pytest.raises(AccessError, match="access to upper@1 was revoked"):
        v["beta"].pull(ref)
    with pytest.raises(AccessError, match="was revoked"):
        v["beta"].pull(AdapterRef("upper"))


def test_never_shared_is_unknown_not_forbidden(world):
    _, _, v = world
    v["alpha"].push(sample_adapter("upper"))
    with pytest.raises(UnknownNameError, match="no adapter upper visible to team 'beta'"):
        v["beta"].pull(AdapterRef("upper"))


def test_revoke_reencrypts_under_a_new_key_for_remaining_teams(world):
    _, _, v = world
    ref = v["alpha"].push(sample_adapter("upper"))
    v["alpha"].share(ref, with_team="beta")
    new = v["alpha"].revoke(AdapterRef("upper"), from_team="beta")
    assert new.version == 2
    with v["alpha"].index.read() as db:
        rows = v["alpha"].index.versions_of(db, "upper")
        grants = v["alpha"].index.grants(db, rows[-1]["object_id"])
    assert grants == {"alpha": "active"}
    assert not v["alpha"].blobs.exists(f"objects/{rows[0]['object_id']}/keys/beta")
    assert v["alpha"].pull(new).files == sample_adapter("upper").files


def test_later_pushes_reach_teams_already_shared_with(world):
    _, _, v = world
    v["alpha"].share(v["alpha"].push(sample_adapter("upper", 1)), with_team="beta")
    v["alpha"].push(sample_adapter("upper", 2))
    assert v["beta"].pull(AdapterRef("upper")).files == sample_adapter("upper", 2).files


def test_later_pushes_skip_revoked_teams(world):
    _, _, v = world
    v["alpha"].share(v["alpha"].push(sample_adapter("upper", 1)), with_team="beta")
    v["alpha"].revoke(AdapterRef("upper"), from_team="beta")
    v["alpha"].push(sample_adapter("upper", 3))
    assert v["beta"].list() == []


def test_protected_key_needs_the_passphrase(tmp_path, monkeypatch):
    monkeypatch.delenv(teams.PASSPHRASE_ENV, raising=False)
    teams.create_team(tmp_path, "alpha", passphrase="pw")
    vault = Vault(tmp_path / "storage" / "vault", team="alpha")
    with pytest.raises(AccessError, match="passphrase-protected"):
        vault.push(sample_adapter("upper"))
    assert Vault(tmp_path / "storage" / "vault", team="alpha", passphrase="pw").push(
        sample_adapter("upper")
    ) == AdapterRef("upper", 1)


def test_no_acting_team_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.delenv("QLORA_HUB_TEAM", raising=False)
    vault = Vault(tmp_path / "storage" / "vault")
    with pytest.raises(ConfigError, match="pass --team NAME or set QLORA_HUB_TEAM"):
        vault.list()


def test_acting_team_comes_from_environment(tmp_path, monkeypatch):
    teams.create_team(tmp_path, "alpha", passphrase=None)
    monkeypatch.setenv("QLORA_HUB_TEAM", "alpha")
    vault = Vault(tmp_path / "storage" / "vault")
    assert vault.push(sample_adapter("upper")) == AdapterRef("upper", 1)


def test_rekeyed_publisher_is_a_distinct_error(world, tmp_path):
    root, homes, v = world
    ref = v["alpha"].push(sample_adapter("upper"))
    v["alpha"].share(ref, with_team="beta")
    stale = tmp_path / "stale-alpha"
    teams.create_team(stale, "alpha", passphrase=None)  # a different key named alpha
    (homes["beta"] / "trust" / "alpha.json").write_bytes(teams.export_public(stale, "alpha"))
    with pytest.raises(AccessError, match="signed by another key of team 'alpha'"):
        Vault(root, home=homes["beta"], team="beta").pull(ref)


def test_replaced_trust_entry_is_used_by_an_open_vault(world, tmp_path):
    root, homes, v = world
    ref = v["alpha"].push(sample_adapter("upper"))
    v["alpha"].share(ref, with_team="beta")
    reader = Vault(root, home=homes["beta"], team="beta")
    assert reader.pull(ref).files == sample_adapter("upper").files  # alpha's key now parsed
    stale = tmp_path / "stale-alpha"
    teams.create_team(stale, "alpha", passphrase=None)
    (homes["beta"] / "trust" / "alpha.json").write_bytes(teams.export_public(stale, "alpha"))
    with pytest.raises(AccessError, match="signed by another key of team 'alpha'"):
        reader.pull(ref)


def test_revoking_a_team_never_given_access_is_refused(world):
    _, _, v = world
    v["alpha"].push(sample_adapter("upper"))
    with pytest.raises(UnknownNameError, match="team 'beta' was never given 'upper'"):
        v["alpha"].revoke(AdapterRef("upper"), from_team="beta")


def test_revoke_with_an_invalid_team_name_is_refused(world):
    _, _, v = world
    v["alpha"].push(sample_adapter("upper"))
    with pytest.raises(ValidationError, match="team name '../x' is invalid"):
        v["alpha"].revoke(AdapterRef("upper"), from_team="../x")
