"""A writer of the shared vault folder can delete or withhold, never grant, hijack or un-revoke.

The attacker is team beta: a real, trusted team with its own keys and write
access to the vault folder (index.sqlite and blobs), the normal set-up when
teams share one storage location.
"""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3

import pytest

from hub import teams
from hub.errors import AccessError, HubError, IntegrityError, UnknownNameError
from hub.grants import sign_record
from hub.testing.storage import sample_adapter
from hub.types import AdapterRef
from plugins.vault.backend import Vault


def _sql(root, statement, *args):
    """What beta does with the sqlite3 shell: edit the index behind the vault's back."""
    db = sqlite3.connect(root / "index.sqlite")
    with db:
        db.execute(statement, args)
    db.close()


def _oid(vault, name, version):
    with vault.index.read() as db:
        return vault.index.version_row(db, name, version)["object_id"]


def _object_readers(vault, name, version):
    oid = _oid(vault, name, version)
    return sorted(k.rsplit("/", 1)[-1] for k in vault.blobs.keys(f"objects/{oid}/keys/"))


def test_injected_grant_does_not_let_a_revoked_team_read_later_versions(world):
    root, _, v = world
    v["alpha"].share(v["alpha"].push(sample_adapter("upper", 1)), with_team="beta")
    v["alpha"].revoke(AdapterRef("upper"), from_team="beta")  # re-encrypted as upper@2
    for oid in (_oid(v["alpha"], "upper", 1), _oid(v["alpha"], "upper", 2)):
        _sql(root, "INSERT OR REPLACE INTO grants VALUES (?, 'beta', 'active')", oid)
    new = v["alpha"].push(sample_adapter("upper", 3))
    assert _object_readers(v["alpha"], "upper", 3) == ["alpha"]
    with pytest.raises(AccessError, match="access to upper@3 was revoked"):
        v["beta"].pull(new)
    assert v["beta"].list() == []


def test_injected_grant_does_not_let_a_team_read_the_next_unshared_version(world):
    root, _, v = world
    v["alpha"].push(sample_adapter("upper", 1))
    _sql(root, "INSERT INTO grants VALUES (?, 'beta', 'active')", _oid(v["alpha"], "upper", 1))
    new = v["alpha"].push(sample_adapter("upper", 2))
    assert _object_readers(v["alpha"], "upper", 2) == ["alpha"]
    with pytest.raises(UnknownNameError, match="no adapter upper@2 visible to team 'beta'"):
        v["beta"].pull(new)


def test_an_edited_owner_row_does_not_let_another_team_publish_under_the_name(world):
    root, _, v = world
    v["alpha"].share(v["alpha"].push(sample_adapter("upper", 1)), with_team="beta")
    _sql(root, "UPDATE names SET owner = 'beta'")
    _sql(root, "UPDATE versions SET publisher = 'beta'")
    with pytest.raises(AccessError, match="adapter 'upper' belongs to team 'alpha'"):
        v["beta"].push(sample_adapter("upper", 666), share_with=["alpha"])
    pulled = v["alpha"].pull(AdapterRef("upper"))
    assert (pulled.version, pulled.files) == (1, sample_adapter("upper", 1).files)


def test_a_record_forged_by_another_team_is_refused_not_served(world):
    """beta skips qlora-hub and writes its own version plus a publish record it signed."""
    root, homes, v = world
    v["alpha"].share(v["alpha"].push(sample_adapter("upper", 1)), with_team="beta")
    mine = v["beta"].push(sample_adapter("mine", 666), share_with=["alpha"])
    forged_state = v["alpha"].state("upper")
    theirs = v["beta"].state("mine").versions[mine.version]
    record = forged_state.record(
        "publish",
        version=2,
        object_id=theirs.object_id,
        manifest_sha256=theirs.manifest_sha256,
        readers=["alpha", "beta"],
    )
    forged = sign_record(v["beta"].identity("beta"), record)
    v["beta"].blobs.put(f"names/upper/{record['seq']:08d}", forged)
    # A server acting for alpha from a home that never read upper (no pin) refuses it too.
    server_home = root.parent / "server"
    shutil.copytree(homes["alpha"], server_home, ignore=shutil.ignore_patterns("pins"))
    server = Vault(root, home=server_home, team="alpha")
    for reader in (v["alpha"], server):
        with pytest.raises(IntegrityError, match="signature by team 'alpha' does not verify"):
            reader.pull(AdapterRef("upper"), where="server")
    last = server.audit.entries()[-1]
    assert (last["action"], last["ref"], last["where"]) == ("pull-refused", "upper", "server")


def test_a_replaced_name_is_refused_by_every_home_that_saw_it(world):
    """beta deletes alpha's records of upper and claims the name itself."""
    root, _, v = world
    v["alpha"].share(v["alpha"].push(sample_adapter("upper", 1)), with_team="beta")
    assert v["alpha"].pull(AdapterRef("upper")).version == 1
    for key in v["beta"].blobs.keys("names/upper/"):
        v["beta"].blobs.delete(key)
    _sql(root, "DELETE FROM names")
    v["beta"].push(sample_adapter("upper", 666), share_with=["alpha"])
    with pytest.raises(
        IntegrityError, match="records of adapter 'upper' were rolled back or replaced"
    ):
        v["alpha"].pull(AdapterRef("upper"))


def test_a_replaced_name_is_refused_by_a_fresh_home_that_names_the_owner(world, tmp_path):
    """A server home that never read upper asks for alpha/upper after beta re-claimed it."""
    from hub.adapters import Adapters

    root, homes, v = world
    server_home = tmp_path / "server"
    teams.create_team(server_home, "server", passphrase=None)
    for t in ("alpha", "beta"):
        teams.trust(server_home, teams.export_public(homes[t], t))
        teams.trust(homes[t], teams.export_public(server_home, "server"))
    v["alpha"].push(sample_adapter("upper", 1), share_with=["server"])
    for key in v["beta"].blobs.keys("names/upper/"):
        v["beta"].blobs.delete(key)
    _sql(root, "DELETE FROM names")
    v["beta"].push(sample_adapter("upper", 666), share_with=["server"])
    server = Adapters(None, Vault(root, home=server_home, team="server"), team="server")
    with pytest.raises(
        UnknownNameError, match="no adapter alpha/upper: 'upper' is owned by team 'beta'"
    ):
        server.pull(AdapterRef.parse("alpha/upper"))
    with pytest.raises(UnknownNameError, match="no adapter alpha/upper"):
        server.show(AdapterRef.parse("alpha/upper"))
    assert server.pull(AdapterRef.parse("beta/upper")).manifest["publisher"] == "beta"


def test_a_deleted_index_is_rebuilt_from_the_signed_records(world):
    root, _, v = world
    v["alpha"].push(sample_adapter("upper", 1))
    v["alpha"].share(v["alpha"].push(sample_adapter("upper", 2)), with_team="beta")
    v["alpha"].revoke(AdapterRef("upper"), from_team="beta")
    v["alpha"].push(sample_adapter("lower", 4))
    for suffix in ("", "-wal", "-shm"):
        (root / f"index.sqlite{suffix}").unlink(missing_ok=True)
    fresh = Vault(root, home=v["alpha"].home, team="alpha")
    assert [(r.name, r.version) for r in fresh.list()] == [
        ("lower", 1),
        *[("upper", i) for i in (1, 2, 3)],
    ]
    assert fresh.reindex() == {"names": 2, "versions": 4, "skipped": {}}
    with fresh.index.read() as db:
        names = [
            tuple(r)
            for r in db.execute("SELECT name, owner, last_version FROM names ORDER BY name")
        ]
        grants = db.execute(
            "SELECT v.version, g.team, g.state FROM grants g JOIN versions v USING (object_id) "
            "WHERE v.name = 'upper' ORDER BY v.version, g.team"
        ).fetchall()
    assert names == [("lower", "alpha", 1), ("upper", "alpha", 3)]
    assert [tuple(g) for g in grants] == [
        (1, "alpha", "active"),
        (2, "alpha", "active"),
        (2, "beta", "revoked"),
        (3, "alpha", "active"),
    ]
    assert fresh.pull(AdapterRef("upper", 2)).files == sample_adapter("upper", 2).files


def test_a_rolled_back_index_never_un_revokes(world):
    root, _, v = world
    v["alpha"].share(v["alpha"].push(sample_adapter("upper", 1)), with_team="beta")
    before = sqlite3.connect(":memory:")
    src = sqlite3.connect(root / "index.sqlite")
    src.backup(before)  # the index while beta could read
    src.close()
    v["alpha"].revoke(AdapterRef("upper"), from_team="beta")
    dst = sqlite3.connect(root / "index.sqlite")
    before.backup(dst)  # beta puts the old index back
    dst.close()
    with pytest.raises(AccessError, match="was revoked"):
        v["beta"].pull(AdapterRef("upper", 1))
    new = v["alpha"].push(sample_adapter("upper", 3))
    assert _object_readers(v["alpha"], "upper", new.version) == ["alpha"]
    with pytest.raises(AccessError, match="was revoked"):
        v["beta"].pull(new)
    assert v["beta"].list() == []


def test_rolled_back_records_are_refused_by_the_owners_home(world):
    """beta deletes the revoke record and the re-encrypted version: the owner's pin notices."""
    root, _, v = world
    v["alpha"].share(v["alpha"].push(sample_adapter("upper", 1)), with_team="beta")
    v["alpha"].revoke(AdapterRef("upper"), from_team="beta")
    # claim, publish upper@1, share with beta | revoke beta, publish upper@2 (re-encrypted)
    for key in v["beta"].blobs.keys("names/upper/")[3:]:
        v["beta"].blobs.delete(key)
    with pytest.raises(IntegrityError, match="rolled back or replaced"):
        v["alpha"].push(sample_adapter("upper", 3))
    with pytest.raises(IntegrityError, match="rolled back or replaced"):
        v["alpha"].share(AdapterRef("upper", 1), with_team="beta")
    assert len(v["beta"].blobs.keys("names/upper/")) == 3  # alpha wrote nothing more


def test_withheld_objects_are_refused_not_replaced(world):
    root, _, v = world
    ref = v["alpha"].push(sample_adapter("upper", 1))
    oid = _oid(v["alpha"], "upper", 1)
    v["beta"].blobs.delete(f"objects/{oid}/payload")
    with pytest.raises(IntegrityError, match="missing"):
        v["alpha"].pull(ref)


def test_signed_state_needs_no_index_to_pull(world):
    root, _, v = world
    ref = v["alpha"].push(sample_adapter("upper", 1))
    _sql(root, "DELETE FROM versions")
    _sql(root, "DELETE FROM grants")
    assert v["alpha"].pull(ref).files == sample_adapter("upper", 1).files


def test_show_reports_readers_from_the_signed_records(world):
    root, _, v = world
    v["alpha"].share(v["alpha"].push(sample_adapter("upper", 1)), with_team="beta")
    v["alpha"].revoke(AdapterRef("upper"), from_team="beta")
    _sql(root, "UPDATE grants SET state = 'active'")
    shown = v["alpha"].show(AdapterRef("upper", 1))
    assert shown["readers"] == {"alpha": "active", "beta": "revoked"}
    assert shown["manifest"]["readers"] == ["alpha"]  # as published, before the share


def test_errors_are_hub_errors_on_one_line(world):
    root, _, v = world
    v["alpha"].push(sample_adapter("upper", 1))
    v["beta"].blobs.put("names/upper/00000001", b"{not json")
    with pytest.raises(HubError) as info:
        v["alpha"].pull(AdapterRef("upper"))
    assert "\n" not in str(info.value)


def test_reindex_command_rebuilds_a_deleted_index_without_keys(qlora_home, qlora_cli):
    teams.create_team(qlora_home, "alpha", passphrase="not needed to reindex")
    vault = Vault(
        qlora_home / "storage" / "vault", team="alpha", passphrase="not needed to reindex"
    )
    vault.push(sample_adapter("upper", 1))
    vault.push(sample_adapter("upper", 2))
    for suffix in ("", "-wal", "-shm"):
        (vault.root / f"index.sqlite{suffix}").unlink(missing_ok=True)
    result = qlora_cli("adapters", "reindex", "--json")
    assert (result.exit_code, json.loads(result.out)) == (
        0,
        {"names": 1, "versions": 2, "skipped": {}},
    )
    with sqlite3.connect(vault.root / "index.sqlite") as db:
        rows = db.execute("SELECT name, version, publisher FROM versions ORDER BY version")
        assert rows.fetchall() == [("upper", 1, "alpha"), ("upper", 2, "alpha")]


@pytest.mark.parametrize("half", ["ed25519", "mldsa65"])
def test_bit_flip_in_either_half_of_a_record_signature_is_refused(world, half):
    root, homes, v = world
    ref = v["alpha"].push(sample_adapter("upper", 1))
    key = "names/upper/00000000"  # the claim: a flip here cannot be caught by a pin
    body = json.loads(v["alpha"].blobs.get(key))
    sig = bytearray(base64.b64decode(body["signature"]))
    sig[10 if half == "ed25519" else 64 + 100] ^= 0x01
    body["signature"] = base64.b64encode(bytes(sig)).decode()
    v["beta"].blobs.put(key, json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    # A home that never read the name checks the signature; alpha's own home, which
    # verified these records before, sees that record 1 no longer links to record 0.
    fresh = root.parent / "fresh"
    shutil.copytree(homes["alpha"], fresh, ignore=shutil.ignore_patterns("pins"))
    with pytest.raises(IntegrityError, match="signature by team 'alpha' does not verify"):
        Vault(root, home=fresh, team="alpha").pull(ref)
    with pytest.raises(IntegrityError, match="inconsistent at record 1"):
        v["alpha"].pull(ref)
