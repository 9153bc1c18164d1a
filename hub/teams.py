"""Team identities: key pairs, encrypted key files, the trust store, sign/verify, wrap/unwrap.

A team has a signing pair and an encryption pair. The default suite is the
post-quantum hybrid ``hybrid``: Ed25519 + ML-DSA-65 signatures (both must
verify) and HPKE with ML-KEM-768 + X25519 for wrapping keys. ``classical``
(Ed25519, HPKE X25519) exists for interoperability. Every primitive comes
from ``cryptography``; nothing here is hand-rolled.

Files under the home directory::

    <home>/teams/<team>/key.json      private bundle, AES-256-GCM under an scrypt key
    <home>/teams/<team>/public.json   public identity (what ``team export-public`` prints)
    <home>/trust/<team>.json          trust store: public identities of trusted teams

Public API (used by the vault, the federated aggregator and the server)::

    create_team(home, name, passphrase=..., suite="hybrid") -> PublicIdentity
    load_identity(home, name, hub=None, passphrase=None, purpose="sign") -> Identity
    Identity.sign(data, context) -> bytes;   Identity.unwrap(blob, info) -> bytes
    trusted(home, name) -> PublicIdentity;   trust(home, public_json) -> PublicIdentity
    verify(public, data, signature, context)  (raises IntegrityError)
    wrap(public, secret, info) -> bytes;     export_public(home, name) -> bytes
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.atomic import atomic_write
from hub.errors import AccessError, IntegrityError, UnknownNameError, ValidationError

PASSPHRASE_ENV = "QLORA_HUB_PASSPHRASE"
SUITES = ("hybrid", "classical")
TEAM_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_KEY_FORMAT = "qlora-hub-key/1"
_PUBLIC_FORMAT = "qlora-hub-public/1"
_SCRYPT = {"n": 2**15, "r": 8, "p": 1}
_ED25519_SIG = 64


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def check_team_name(name: str) -> str:
    """Return ``name`` if it is a valid team name (lowercase ASCII, 1-32 chars), else raise."""
    if not isinstance(name, str) or not TEAM_NAME_RE.match(name):
        raise ValidationError(
            f"team name {name!r} is invalid: use 1-32 lowercase letters, digits, '-' or '_', "
            "starting with a letter"
        )
    return name


def _message(context: str, data: bytes) -> bytes:
    # Domain separation: a manifest signature can never be replayed as a contribution one.
    return b"qlora-hub/v1\x00" + context.encode() + b"\x00" + data


@dataclass(frozen=True)
class PublicIdentity:
    """A team's public keys: what others put in their trust store."""

    team: str
    suite: str
    ed25519: bytes
    x25519: bytes
    mldsa65: bytes = b""
    mlkem768: bytes = b""

    @property
    def fingerprint(self) -> str:
        """SHA-256 over the canonical public JSON, hex (shown by ``team list``)."""
        return hashlib.sha256(self.to_json()).hexdigest()

    def to_json(self) -> bytes:
        """Canonical JSON encoding (sorted keys, base64 key bytes)."""
        body = {"format": _PUBLIC_FORMAT, "team": self.team, "suite": self.suite}
        body |= {k: _b64(getattr(self, k)) for k in ("ed25519", "x25519", "mldsa65", "mlkem768")}
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> PublicIdentity:
        """Parse :meth:`to_json` output; raises ValidationError on anything else."""
        try:
            body = json.loads(data)
            if body.get("format") != _PUBLIC_FORMAT or body.get("suite") not in SUITES:
                raise ValueError("format")
            pub = cls(
                team=check_team_name(body["team"]),
                suite=body["suite"],
                **{k: _unb64(body[k]) for k in ("ed25519", "x25519", "mldsa65", "mlkem768")},
            )
            pub._keys()  # parses every key, so garbage fails here rather than at use
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ValidationError(
                "not a qlora-hub public identity: use the file `qlora-hub team export-public` wrote"
            ) from None
        return pub

    def _keys(self) -> dict[str, Any]:
        from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem, x25519

        keys = {
            "ed25519": ed25519.Ed25519PublicKey.from_public_bytes(self.ed25519),
            "x25519": x25519.X25519PublicKey.from_public_bytes(self.x25519),
        }
        if self.suite == "hybrid":
            keys["mldsa65"] = mldsa.MLDSA65PublicKey.from_public_bytes(self.mldsa65)
            keys["mlkem768"] = mlkem.MLKEM768PublicKey.from_public_bytes(self.mlkem768)
        return keys


def _hpke_suite(suite: str) -> Any:
    from cryptography.hazmat.primitives import hpke

    kem = hpke.KEM.MLKEM768_X25519 if suite == "hybrid" else hpke.KEM.X25519
    return hpke.Suite(kem, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def verify(public: PublicIdentity, data: bytes, signature: bytes, context: str) -> None:
    """Check ``signature`` over ``data`` by ``public``; hybrid needs BOTH halves valid.

    The expected layout comes from the public key's suite, never from the
    signature, so a classical-only signature cannot pass for a hybrid team.

    Raises:
        IntegrityError: the signature is malformed or either half fails.
    """
    from cryptography.exceptions import InvalidSignature

    keys = public._keys()
    msg = _message(context, data)
    want = _ED25519_SIG + (3309 if public.suite == "hybrid" else 0)
    bad = IntegrityError(
        f"signature by team {public.team!r} does not verify: the data or signature was altered"
    )
    if len(signature) != want:
        raise bad
    try:
        keys["ed25519"].verify(signature[:_ED25519_SIG], msg)
        if public.suite == "hybrid":
            keys["mldsa65"].verify(signature[_ED25519_SIG:], msg)
    except InvalidSignature:
        raise bad from None


def wrap(public: PublicIdentity, secret: bytes, info: bytes) -> bytes:
    """HPKE-encrypt ``secret`` (a data key) to ``public``; ``info`` binds its context."""
    keys = public._keys()
    if public.suite == "hybrid":
        from cryptography.hazmat.primitives import hpke

        recipient = hpke.MLKEM768X25519PublicKey(keys["mlkem768"], keys["x25519"])
    else:
        recipient = keys["x25519"]
    return _hpke_suite(public.suite).encrypt(secret, recipient, info=info)


class Identity:
    """A team's private keys, in memory only. Never printed: ``repr`` shows the team name."""

    def __init__(self, bundle: dict[str, Any]) -> None:
        from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem, x25519

        self.team = check_team_name(bundle["team"])
        self.suite = bundle["suite"]
        self._ed = ed25519.Ed25519PrivateKey.from_private_bytes(_unb64(bundle["ed25519"]))
        self._x = x25519.X25519PrivateKey.from_private_bytes(_unb64(bundle["x25519"]))
        self._mldsa = self._mlkem = None
        self._public: PublicIdentity | None = None
        if self.suite == "hybrid":
            self._mldsa = mldsa.MLDSA65PrivateKey.from_seed_bytes(_unb64(bundle["mldsa65"]))
            self._mlkem = mlkem.MLKEM768PrivateKey.from_seed_bytes(_unb64(bundle["mlkem768"]))

    def __repr__(self) -> str:
        return f"Identity(team={self.team!r}, suite={self.suite!r})"

    @property
    def public(self) -> PublicIdentity:
        """The matching public identity (computed once)."""
        if self._public is None:
            self._public = self._derive_public()
        return self._public

    def _derive_public(self) -> PublicIdentity:
        from cryptography.hazmat.primitives import serialization as ser

        raw = {"encoding": ser.Encoding.Raw, "format": ser.PublicFormat.Raw}
        return PublicIdentity(
            team=self.team,
            suite=self.suite,
            ed25519=self._ed.public_key().public_bytes(**raw),
            x25519=self._x.public_key().public_bytes(**raw),
            mldsa65=self._mldsa.public_key().public_bytes_raw() if self._mldsa else b"",
            mlkem768=self._mlkem.public_key().public_bytes_raw() if self._mlkem else b"",
        )

    def sign(self, data: bytes, context: str) -> bytes:
        """Sign ``data`` for ``context`` (e.g. ``"manifest"``): Ed25519 sig || ML-DSA-65 sig."""
        msg = _message(context, data)
        sig = self._ed.sign(msg)
        if self._mldsa is not None:
            sig += self._mldsa.sign(msg)
        return sig

    def unwrap(self, blob: bytes, info: bytes) -> bytes:
        """Open an HPKE blob made by :func:`wrap` for this team.

        Raises:
            AccessError: this team's private key does not open it.
        """
        if self._mlkem is not None:
            from cryptography.hazmat.primitives import hpke

            key = hpke.MLKEM768X25519PrivateKey(self._mlkem, self._x)
        else:
            key = self._x
        try:
            return _hpke_suite(self.suite).decrypt(blob, key, info=info)
        except Exception:  # cryptography raises InvalidTag / ValueError for foreign blobs
            raise AccessError(
                f"team {self.team}'s private key does not open this wrapped key: "
                "it was wrapped for another key (re-created team?) or altered"
            ) from None


def _generate_bundle(name: str, suite: str) -> dict[str, Any]:
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

    raw = {"encoding": ser.Encoding.Raw, "format": ser.PrivateFormat.Raw}
    raw["encryption_algorithm"] = ser.NoEncryption()
    bundle = {
        "format": _KEY_FORMAT,
        "team": name,
        "suite": suite,
        "ed25519": _b64(ed25519.Ed25519PrivateKey.generate().private_bytes(**raw)),
        "x25519": _b64(x25519.X25519PrivateKey.generate().private_bytes(**raw)),
    }
    if suite == "hybrid":
        bundle["mldsa65"] = _b64(os.urandom(32))  # ML-DSA-65 seed (FIPS 204 xi)
        bundle["mlkem768"] = _b64(os.urandom(64))  # ML-KEM-768 seed (FIPS 203 d || z)
    return bundle


def _scrypt_key(passphrase: bytes, salt: bytes, params: dict[str, int]) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return Scrypt(salt=salt, length=32, **params).derive(passphrase)


def _as_bytes(passphrase: str | bytes) -> bytes:
    return passphrase.encode() if isinstance(passphrase, str) else passphrase


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
    bundle = _generate_bundle(name, suite)
    plain = json.dumps(bundle, sort_keys=True).encode()
    if passphrase is None:
        keyfile = {"format": _KEY_FORMAT, "team": name, "protection": "none", "bundle": bundle}
    else:
        salt, nonce = os.urandom(16), os.urandom(12)
        key = _scrypt_key(_as_bytes(passphrase), salt, _SCRYPT)
        ct = AESGCM(key).encrypt(nonce, plain, f"{_KEY_FORMAT}:{name}".encode())
        keyfile = {
            "format": _KEY_FORMAT,
            "team": name,
            "protection": "scrypt+aes-256-gcm",
            "scrypt": {"salt": _b64(salt), **_SCRYPT},
            "nonce": _b64(nonce),
            "ciphertext": _b64(ct),
        }
    ident = Identity(bundle)
    atomic_write(tdir / "key.json", json.dumps(keyfile, indent=1).encode(), mode=0o600)
    atomic_write(tdir / "public.json", ident.public.to_json())
    atomic_write(Path(home) / "trust" / f"{name}.json", ident.public.to_json())
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
    key = _scrypt_key(_as_bytes(passphrase), _unb64(sc["salt"]), {k: sc[k] for k in "nrp"})
    try:
        plain = AESGCM(key).decrypt(
            _unb64(keyfile["nonce"]),
            _unb64(keyfile["ciphertext"]),
            f"{_KEY_FORMAT}:{name}".encode(),
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
    path = Path(home) / "trust" / f"{pub.team}.json"
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
    path = Path(home) / "trust" / f"{check_team_name(name)}.json"
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
