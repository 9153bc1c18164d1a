"""hub.grants: the owner-signed records that decide who owns a name and who reads what."""

from __future__ import annotations

import pytest

from hub.errors import AccessError, IntegrityError
from hub.grants import NameState, claim_record, replay, sign_record
from hub.identity import Identity, generate_bundle


@pytest.fixture(scope="module")
def keys():
    """alpha (the owner) and beta, classical keys (fast; the format is the same)."""
    return {t: Identity(generate_bundle(t, "classical")) for t in ("alpha", "beta")}


def _public_of(keys):
    def public_of(team):
        if team not in keys:
            raise AccessError(f"team {team!r} is not in the trust store")
        return keys[team].public

    return public_of


def _chain(keys, *steps):
    """Stored records: alpha's claim of 'upper', then ``(action, fields)`` steps."""
    blobs = [sign_record(keys["alpha"], claim_record("upper", keys["alpha"].public))]
    for action, fields in steps:
        state = replay(blobs, _public_of(keys))
        blobs.append(sign_record(keys["alpha"], state.record(action, **fields)))
    return blobs


def _publish(version, readers=("alpha",)):
    oid = f"{version:032x}"
    return "publish", {
        "version": version,
        "object_id": oid,
        "manifest_sha256": "ab" * 32,
        "readers": list(readers),
    }


def test_the_claimant_owns_the_name_and_reads_its_versions(keys):
    state = replay(_chain(keys, _publish(1)), _public_of(keys))
    assert isinstance(state, NameState)
    assert (state.name, state.owner, state.live(), state.readers(1)) == (
        "upper",
        "alpha",
        [1],
        {"alpha"},
    )


def test_sharing_one_version_does_not_share_the_others(keys):
    blobs = _chain(keys, _publish(1), _publish(2), ("share", {"team": "beta", "versions": [1]}))
    state = replay(blobs, _public_of(keys))
    assert (state.readers(1), state.readers(2)) == ({"alpha", "beta"}, {"alpha"})
    assert state.next_readers() == {"alpha"}  # the latest version's readers, not version 1's


def test_a_revoke_removes_the_team_from_every_version_and_later_pushes(keys):
    blobs = _chain(
        keys,
        _publish(1, ("alpha", "beta")),
        _publish(2, ("alpha", "beta")),
        ("revoke", {"team": "beta"}),
    )
    state = replay(blobs, _public_of(keys))
    assert (state.readers(1), state.readers(2), state.next_readers()) == (
        {"alpha"},
        {"alpha"},
        {"alpha"},
    )
    assert state.revoked == {"beta"}


def test_a_share_after_a_revoke_gives_access_again(keys):
    blobs = _chain(
        keys,
        _publish(1, ("alpha", "beta")),
        ("revoke", {"team": "beta"}),
        ("share", {"team": "beta", "versions": [1]}),
    )
    state = replay(blobs, _public_of(keys))
    assert (state.readers(1), state.revoked) == ({"alpha", "beta"}, set())


def test_deleted_versions_are_not_live_and_their_numbers_are_not_reused(keys):
    blobs = _chain(keys, _publish(1), _publish(2), ("delete", {"versions": [2]}))
    state = replay(blobs, _public_of(keys))
    assert (state.live(), state.latest(), state.last_version) == ([1], 1, 2)
    action, fields = _publish(2)
    blobs.append(sign_record(keys["alpha"], state.record(action, **fields)))
    with pytest.raises(IntegrityError, match="at record 4 \\(version number reused\\)"):
        replay(blobs, _public_of(keys))


def test_a_record_signed_by_another_team_is_refused(keys):
    blobs = _chain(keys, _publish(1))
    action, fields = _publish(2, ("alpha", "beta"))
    state = replay(blobs, _public_of(keys))
    blobs.append(sign_record(keys["beta"], state.record(action, **fields)))
    with pytest.raises(IntegrityError, match="signature by team 'alpha' does not verify"):
        replay(blobs, _public_of(keys))


@pytest.mark.parametrize("change", ["drop-middle", "reorder", "other-name"])
def test_gaps_reordering_and_foreign_records_are_refused(keys, change):
    blobs = _chain(keys, _publish(1), _publish(2), _publish(3))
    if change == "drop-middle":
        del blobs[2]
    elif change == "reorder":
        blobs[2], blobs[3] = blobs[3], blobs[2]
    else:
        other = [sign_record(keys["alpha"], claim_record("lower", keys["alpha"].public))]
        blobs[0] = other[0]
    with pytest.raises(IntegrityError, match="inconsistent at record"):
        replay(blobs, _public_of(keys))


def test_an_untrusted_owner_or_another_key_of_it_is_an_access_error(keys):
    blobs = _chain(keys, _publish(1))
    with pytest.raises(AccessError, match="not in the trust store"):
        replay(blobs, _public_of({"beta": keys["beta"]}))
    rekeyed = Identity(generate_bundle("alpha", "classical"))
    with pytest.raises(AccessError, match="signed by another key of team 'alpha'"):
        replay(blobs, _public_of({"alpha": rekeyed}))


def test_verified_records_are_not_verified_again(keys):
    blobs = _chain(keys, _publish(1))
    verified: set[tuple[str, str]] = set()
    replay(blobs, _public_of(keys), verified)
    assert len(verified) == 2
    replay(blobs, _public_of(keys), verified)  # a cache hit checks links, not signatures
    assert len(verified) == 2


def test_a_prefix_the_caller_verified_before_is_checked_by_links_only(keys):
    blobs = _chain(keys, _publish(1))
    state = replay(blobs, _public_of(keys))
    action, fields = _publish(2)
    blobs.append(sign_record(keys["beta"], state.record(action, **fields)))  # not alpha's
    with pytest.raises(IntegrityError, match="does not verify"):
        replay(blobs, _public_of(keys), trusted_upto=1)  # record 2 is beyond the prefix
    assert replay(blobs, _public_of(keys), trusted_upto=2).live() == [1, 2]  # caller's word
