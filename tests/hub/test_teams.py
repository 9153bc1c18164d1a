"""hub.teams: key files, trust store, hybrid signatures, HPKE key wrapping."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem, x25519

from hub import hookimpl, identity, teams
from hub.errors import AccessError, IntegrityError, UnknownNameError, ValidationError


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


def test_create_writes_key_public_and_self_trust(home):
    pub = teams.create_team(home, "alpha", passphrase=None)
    assert (home / "teams/alpha/key.json").stat().st_mode & 0o777 == 0o600
    assert teams.export_public(home, "alpha") == pub.to_json()
    assert teams.trusted(home, "alpha") == pub


def test_hybrid_is_the_default_suite(home):
    pub = teams.create_team(home, "alpha", passphrase=None)
    assert (pub.suite, len(pub.mldsa65), len(pub.mlkem768)) == ("hybrid", 1952, 1184)


def test_creating_an_existing_team_is_refused(home):
    teams.create_team(home, "alpha", passphrase=None)
    with pytest.raises(ValidationError, match="already exists"):
        teams.create_team(home, "alpha", passphrase=None)


@pytest.mark.parametrize("bad", ["Alpha", "../x", "a/b", "", "x" * 33, "al\u0440ha"])
def test_invalid_team_names_are_refused(home, bad):
    with pytest.raises(ValidationError, match="team name"):
        teams.create_team(home, bad, passphrase=None)


def test_passphrase_protected_key_file_round_trips(home):
    pub = teams.create_team(home, "alpha", passphrase="s3cret pass")
    ident = teams.load_identity(home, "alpha", passphrase="s3cret pass")
    assert ident.public == pub


def test_key_file_holds_no_plaintext_private_key(home):
    teams.create_team(home, "alpha", passphrase="s3cret pass")
    ident = teams.load_identity(home, "alpha", passphrase="s3cret pass")
    from cryptography.hazmat.primitives import serialization as ser

    raw = ident._ed.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())
    text = (home / "teams/alpha/key.json").read_bytes()
    assert raw.hex().encode() not in text and identity.to_b64(raw).encode() not in text
    assert json.loads(text)["protection"] == "scrypt+aes-256-gcm"


def test_wrong_passphrase_is_an_access_error(home):
    teams.create_team(home, "alpha", passphrase="right")
    with pytest.raises(AccessError, match="wrong passphrase for team alpha"):
        teams.load_identity(home, "alpha", passphrase="wrong")


def test_missing_passphrase_names_the_environment_variable(home, monkeypatch):
    monkeypatch.delenv(teams.PASSPHRASE_ENV, raising=False)
    teams.create_team(home, "alpha", passphrase="right")
    with pytest.raises(AccessError, match="QLORA_HUB_PASSPHRASE"):
        teams.load_identity(home, "alpha")


def test_passphrase_comes_from_environment(home, monkeypatch):
    teams.create_team(home, "alpha", passphrase="from-env")
    monkeypatch.setenv(teams.PASSPHRASE_ENV, "from-env")
    assert teams.load_identity(home, "alpha").team == "alpha"


def test_unknown_team_has_no_keys(home):
    with pytest.raises(UnknownNameError, match="team create ghost"):
        teams.load_identity(home, "ghost")


def test_key_provider_hook_supplies_keys(home, hub_factory):
    bundle = identity.generate_bundle("vaulted", "hybrid")

    class Provider:
        @hookimpl
        def key_provider(self, team, purpose):
            return json.dumps(bundle).encode() if team == "vaulted" else None

    hub = hub_factory(Provider())
    ident = teams.load_identity(home, "vaulted", hub=hub)
    assert ident.public == identity.Identity(bundle).public


def test_identity_repr_shows_no_key_material(home):
    teams.create_team(home, "alpha", passphrase=None)
    assert repr(teams.load_identity(home, "alpha")) == "Identity(team='alpha', suite='hybrid')"


# -- signatures -------------------------------------------------------------------------
@pytest.fixture
def alpha(home):
    teams.create_team(home, "alpha", passphrase=None)
    return teams.load_identity(home, "alpha")


def test_hybrid_signature_verifies(alpha):
    sig = alpha.sign(b"payload", "manifest")
    assert len(sig) == 64 + 3309
    identity.verify(alpha.public, b"payload", sig, "manifest")


def test_signature_over_other_data_is_rejected(alpha):
    sig = alpha.sign(b"payload", "manifest")
    with pytest.raises(IntegrityError, match="does not verify"):
        identity.verify(alpha.public, b"payloaD", sig, "manifest")


def test_signature_for_another_context_is_rejected(alpha):
    sig = alpha.sign(b"payload", "contribution")
    with pytest.raises(IntegrityError):
        identity.verify(alpha.public, b"payload", sig, "manifest")


def test_ed25519_half_alone_is_rejected(alpha):
    sig = alpha.sign(b"payload", "manifest")
    with pytest.raises(IntegrityError):
        identity.verify(alpha.public, b"payload", sig[:64], "manifest")


def test_valid_ed25519_with_forged_mldsa_half_is_rejected(alpha):
    sig = alpha.sign(b"payload", "manifest")
    forged = sig[:64] + mldsa.MLDSA65PrivateKey.generate().sign(
        identity._message("manifest", b"payload")
    )
    with pytest.raises(IntegrityError):
        identity.verify(alpha.public, b"payload", forged, "manifest")


def test_valid_mldsa_with_forged_ed25519_half_is_rejected(alpha):
    sig = alpha.sign(b"payload", "manifest")
    forged = ed25519.Ed25519PrivateKey.generate().sign(b"x") + sig[64:]
    with pytest.raises(IntegrityError):
        identity.verify(alpha.public, b"payload", forged, "manifest")


def test_classical_team_signs_with_ed25519_only(home):
    teams.create_team(home, "beta", passphrase=None, suite="classical")
    beta = teams.load_identity(home, "beta")
    sig = beta.sign(b"m", "manifest")
    assert len(sig) == 64
    identity.verify(beta.public, b"m", sig, "manifest")


def test_mldsa65_round_trip_with_cryptography():
    key = mldsa.MLDSA65PrivateKey.generate()
    sig = key.sign(b"message", b"ctx")
    key.public_key().verify(sig, b"message", b"ctx")
    assert len(sig) == 3309


# -- HPKE -------------------------------------------------------------------------------
def test_hybrid_wrap_unwrap_round_trip(alpha):
    blob = identity.wrap(alpha.public, b"k" * 32, b"info")
    assert len(blob) == 1088 + 32 + 32 + 16  # ML-KEM-768+X25519 enc, key, tag
    assert alpha.unwrap(blob, b"info") == b"k" * 32


def test_unwrap_with_other_info_fails(alpha):
    blob = identity.wrap(alpha.public, b"k" * 32, b"object-1")
    with pytest.raises(AccessError):
        alpha.unwrap(blob, b"object-2")


def test_unwrap_by_another_team_fails(home, alpha):
    teams.create_team(home, "beta", passphrase=None)
    beta = teams.load_identity(home, "beta")
    with pytest.raises(AccessError, match="team beta's private key"):
        beta.unwrap(identity.wrap(alpha.public, b"k" * 32, b"i"), b"i")


def test_classical_wrap_uses_x25519_hpke(home):
    teams.create_team(home, "beta", passphrase=None, suite="classical")
    beta = teams.load_identity(home, "beta")
    blob = identity.wrap(beta.public, b"d" * 32, b"i")
    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    assert suite.decrypt(blob, beta._x, info=b"i") == b"d" * 32


def test_hpke_mlkem768_x25519_round_trip_with_cryptography():
    sk = hpke.MLKEM768X25519PrivateKey(
        mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    )
    suite = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    assert (
        suite.decrypt(suite.encrypt(b"secret", sk.public_key(), info=b"x"), sk, info=b"x")
        == b"secret"
    )


# -- trust store ------------------------------------------------------------------------
def test_trust_adds_another_homes_team(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    pub = teams.create_team(a, "alpha", passphrase=None)
    teams.trust(b, teams.export_public(a, "alpha"))
    assert teams.trusted(b, "alpha") == pub


def test_untrusted_team_is_an_access_error(home):
    with pytest.raises(AccessError, match="not in the trust store"):
        teams.trusted(home, "stranger")


def test_trust_refuses_a_different_key_for_a_known_team(tmp_path):
    teams.create_team(tmp_path / "a", "alpha", passphrase=None)
    teams.create_team(tmp_path / "b", "alpha", passphrase=None)
    with pytest.raises(AccessError, match="different key"):
        teams.trust(tmp_path / "a", teams.export_public(tmp_path / "b", "alpha"))


def test_trust_refuses_garbage(home):
    with pytest.raises(ValidationError, match="not a qlora-hub public identity"):
        teams.trust(home, b'{"format": "x"}')


def test_list_marks_local_keys(tmp_path):
    teams.create_team(tmp_path / "a", "alpha", passphrase=None)
    teams.create_team(tmp_path / "b", "beta", passphrase=None)
    teams.trust(tmp_path / "a", teams.export_public(tmp_path / "b", "beta"))
    rows = teams.list_teams(tmp_path / "a")
    assert [(r["team"], r["local_keys"]) for r in rows] == [("alpha", True), ("beta", False)]


def test_malformed_key_provider_bundle_is_an_access_error(home, hub_factory):
    class Provider:
        @hookimpl
        def key_provider(self, team, purpose):
            return b'{"team": "alpha"}'

    with pytest.raises(AccessError, match="the key_provider hook gave a malformed key bundle"):
        teams.load_identity(home, "alpha", hub=hub_factory(Provider()))


def test_key_provider_bundle_for_another_team_is_refused(home, hub_factory):
    class Provider:
        @hookimpl
        def key_provider(self, team, purpose):
            return json.dumps(identity.generate_bundle("mallory", "hybrid")).encode()

    with pytest.raises(AccessError, match="gave the keys of team 'mallory', not 'alpha'"):
        teams.load_identity(home, "alpha", hub=hub_factory(Provider()))


def test_corrupt_key_file_is_an_access_error(home):
    teams.create_team(home, "alpha", passphrase=None)
    (home / "teams/alpha/key.json").write_bytes(b"{not json")
    with pytest.raises(AccessError, match="is corrupt"):
        teams.load_identity(home, "alpha")
