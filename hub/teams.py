"""Teams on disk: encrypted key files, public identities and the trust store.

The keys themselves (sign/verify, wrap/unwrap, the hybrid suites) live in
:mod:`hub.identity`; this module stores them under the home directory::

    <home>/teams/<team>/key.json      private bundle, AES-256-GCM under an scrypt key
    <home>/teams/<team>/public.json   public identity (what ``team export-public`` prints)
    <home>/trust/<team>.json          trust store: public identities of trusted teams

Public API (used by the vault, the federated aggregator and the server)::

    create_team(home, name, passphrase=..., suite="hybrid") -> PublicIdentity
    load_identity(home, name, hub=None, passphrase=None, purpose="sign") -> Identity
    trusted(home, name) -> PublicIdentity;   trust(home, public_json) -> PublicIdentity
    export_public(home, name) -> bytes;      list_teams(home) -> list[dict]
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hub.atomic import atomic_write
from hub.errors import AccessError, UnknownNameError, ValidationError
from hub.identity import (
    KEY_FORMAT,
    SUITES,
    Identity,
    PublicIdentity,
    check_team_name,
    from_b64,
    generate_bundle,
    to_b64,
)

PASSPHRASE_ENV = "QLORA_HUB_PASSPHRASE"
_SCRYPT = {"n": 2**15, "r": 8, "p": 1}


def _scrypt_key(passphrase: bytes, salt: bytes, params: dict[str, int]) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return Scrypt(salt=salt, length=32, **params).derive(passphrase)


def _as_bytes(passphrase: str | bytes) -> bytes:
    return passphrase.encode() if isinstance(passphrase, str) else passphrase


def trust_file(home: Path, name: str) -> Path:
    """Where the trust store keeps team ``name``'s public identity."""
    return Path(home) / "trust" / f"{check_team_name(name)}.json"


def team_dir(home: Path, name: str) -> Path:
    """Directory holding ``name``'s key file and public identity."""
    return Path(home) / "teams" / check_team_name(name)


def create_team(
    home: Path, name: str, *, passphrase: str | bytes | None, suite: str = "hybrid"
) -> PublicIdentity:
    """Create team ``name``: new key pairs, key file, public file, and trust of itself.

    Args:
        home: qlora-hub home directory.
        passphrase: protects the key file with scrypt + AES-256-GCM; ``None``
            stores it unprotected (file mode 0600; for tests and demos only).
        suite: ``"hybrid"`` (default, post-quantum) or ``"classical"``.
    """
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if suite not in SUITES:
        raise ValidationError(f"unknown key suite {suite!r}: use one of {', '.join(SUITES)}")
    tdir = team_dir(home, name)
    if (tdir / "key.json").exists():
        raise ValidationError(f"team {name!r} already exists in {tdir}: pick another name")
    bundle = generate_bundle(name, suite)
    plain = json.dumps(bundle, sort_keys=True).encode()
    if passphrase is None:
        keyfile = {"format": KEY_FORMAT, "team": name, "protection": "none", "bundle": bundle}
    else:
        salt, nonce = os.urandom(16), os.urandom(12)
        key = _scrypt_key(_as_bytes(passphrase), salt, _SCRYPT)
        ct = AESGCM(key).encrypt(nonce, plain, f"{KEY_FORMAT}:{name}".encode())
        keyfile = {
            "format": KEY_FORMAT,
            "team": name,
            "protection": "scrypt+aes-256-gcm",
            "scrypt": {"salt": to_b64(salt), **_SCRYPT},
            "nonce": to_b64(nonce),
            "ciphertext": to_b64(ct),
        }
    ident = Identity(bundle)
    atomic_write(tdir / "key.json", json.dumps(keyfile, indent=1).encode(), mode=0o600)
    atomic_write(tdir / "public.json", ident.public.to_json())
    atomic_write(trust_file(home, name), ident.public.to_json())
    return ident.public


def is_protected(home: Path, name: str) -> bool:
    """Whether ``name``'s key file needs a passphrase."""
    path = team_dir(home, name) / "key.json"
    if not path.is_file():
        return False
    return json.loads(path.read_bytes()).get("protection") != "none"


def load_identity(
    home: Path,
    name: str,
    *,
    hub: Any = None,
    passphrase: str | bytes | Callable[[], str] | None = None,
    purpose: str = "sign",
) -> Identity:
    """Load team ``name``'s private keys.

    Order: the ``key_provider`` hook (if ``hub`` is given), then the key file
    with ``passphrase`` (a string, or a callable asked only when needed) or
    ``$QLORA_HUB_PASSPHRASE``.

    Raises:
        UnknownNameError: no provider and no key file for ``name``.
        AccessError: the key file needs a passphrase or the passphrase is wrong.
    """
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    check_team_name(name)
    if hub is not None:
        provided = hub.pm.hook.key_provider(team=name, purpose=purpose)
        if provided is not None:
            return _from_bundle(provided, name, "the key_provider hook")
    path = team_dir(home, name) / "key.json"
    if not path.is_file():
        raise UnknownNameError(
            f"no keys for team {name!r} in {path.parent}: run `qlora-hub team create {name}`"
        )
    try:
        keyfile = json.loads(path.read_bytes())
        protection = keyfile["protection"]
    except (ValueError, KeyError, TypeError):
        raise AccessError(f"key file {path} is corrupt: restore it from a backup") from None
    if protection == "none":
        return _from_bundle(json.dumps(keyfile.get("bundle")).encode(), name, str(path))
    if passphrase is None:
        passphrase = os.environ.get(PASSPHRASE_ENV)
    if callable(passphrase):  # e.g. a CLI prompt, asked only when a key file needs it
        passphrase = passphrase()
    if not passphrase:
        raise AccessError(
            f"team {name}'s key file is passphrase-protected: set {PASSPHRASE_ENV} "
            "or run interactively to be prompted"
        )
    sc = keyfile["scrypt"]
    key = _scrypt_key(_as_bytes(passphrase), from_b64(sc["salt"]), {k: sc[k] for k in "nrp"})
    try:
        plain = AESGCM(key).decrypt(
            from_b64(keyfile["nonce"]),
            from_b64(keyfile["ciphertext"]),
            f"{KEY_FORMAT}:{name}".encode(),
        )
    except InvalidTag:
        raise AccessError(
            f"wrong passphrase for team {name}'s key file (or the file was altered)"
        ) from None
    return _from_bundle(plain, name, str(path))


def _from_bundle(data: bytes, name: str, source: str) -> Identity:
    """Parse a key bundle (docs/security.md) for team ``name``; one-line error if malformed."""
    try:
        ident = Identity(json.loads(data))
    except (ValueError, KeyError, TypeError):
        raise AccessError(f"{source} gave a malformed key bundle for team {name!r}") from None
    if ident.team != name:
        raise AccessError(f"{source} gave the keys of team {ident.team!r}, not {name!r}")
    return ident


def export_public(home: Path, name: str) -> bytes:
    """The public identity JSON of local team ``name`` (to hand to other teams)."""
    path = team_dir(home, name) / "public.json"
    if not path.is_file():
        raise UnknownNameError(f"no team {name!r} here: run `qlora-hub team create {name}`")
    return path.read_bytes()


def trust(home: Path, public_json: bytes) -> PublicIdentity:
    """Add a public identity to the trust store (refuses to replace a different key)."""
    pub = PublicIdentity.from_json(public_json)
    path = trust_file(home, pub.team)
    if path.is_file() and PublicIdentity.from_json(path.read_bytes()) != pub:
        raise AccessError(
            f"the trust store already holds a different key for team {pub.team!r}: "
            f"remove {path} first if the team really re-keyed"
        )
    atomic_write(path, pub.to_json())
    return pub


def trusted(home: Path, name: str) -> PublicIdentity:
    """The trusted public identity of ``name``.

    Raises:
        AccessError: ``name`` is not in the trust store.
    """
    path = trust_file(home, name)
    if not path.is_file():
        raise AccessError(
            f"team {name!r} is not in the trust store: get its public file and run "
            "`qlora-hub team trust FILE`"
        )
    return PublicIdentity.from_json(path.read_bytes())


def list_teams(home: Path) -> list[dict[str, Any]]:
    """Every trusted team: name, suite, fingerprint, and whether its private keys are here."""
    rows = []
    for path in sorted((Path(home) / "trust").glob("*.json")):
        pub = PublicIdentity.from_json(path.read_bytes())
        local = (team_dir(home, pub.team) / "key.json").is_file()
        rows.append(
            {
                "team": pub.team,
                "suite": pub.suite,
                "fingerprint": pub.fingerprint[:16],
                "local_keys": local,
            }
        )
    return rows
