"""Team identities in memory: key pairs, sign/verify, wrap/unwrap (no files here).

A team has a signing pair and an encryption pair. The default suite is the
post-quantum hybrid ``hybrid``: Ed25519 + ML-DSA-65 signatures (both must
verify) and HPKE with ML-KEM-768 + X25519 for wrapping keys. ``classical``
(Ed25519, HPKE X25519) exists for interoperability. Every primitive comes
from ``cryptography``; nothing here is hand-rolled. :mod:`hub.teams` keeps
these keys on disk (encrypted key files, the trust store).

Public API::

    Identity(bundle).sign(data, context) -> bytes;   Identity.unwrap(blob, info) -> bytes
    Identity.public -> PublicIdentity;   PublicIdentity.to_json() / from_json(data)
    verify(public, data, signature, context)  (raises IntegrityError)
    wrap(public, secret, info) -> bytes;   generate_bundle(name, suite) -> dict
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from hub.errors import AccessError, IntegrityError, ValidationError
from hub.names import check_team_name

SUITES = ("hybrid", "classical")
KEY_FORMAT = "qlora-hub-key/1"
_PUBLIC_FORMAT = "qlora-hub-public/1"
_ED25519_SIG = 64


def to_b64(data: bytes) -> str:
    """Standard base64 text of ``data`` (how key files and public identities store bytes)."""
    return base64.b64encode(data).decode("ascii")


def from_b64(text: str) -> bytes:
    """Inverse of :func:`to_b64`; raises ``ValueError`` on anything but strict base64."""
    return base64.b64decode(text.encode("ascii"), validate=True)


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
        body |= {k: to_b64(getattr(self, k)) for k in ("ed25519", "x25519", "mldsa65", "mlkem768")}
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
                **{k: from_b64(body[k]) for k in ("ed25519", "x25519", "mldsa65", "mlkem768")},
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
        self._ed = ed25519.Ed25519PrivateKey.from_private_bytes(from_b64(bundle["ed25519"]))
        self._x = x25519.X25519PrivateKey.from_private_bytes(from_b64(bundle["x25519"]))
        self._mldsa = self._mlkem = None
        self._public: PublicIdentity | None = None
        if self.suite == "hybrid":
            self._mldsa = mldsa.MLDSA65PrivateKey.from_seed_bytes(from_b64(bundle["mldsa65"]))
            self._mlkem = mlkem.MLKEM768PrivateKey.from_seed_bytes(from_b64(bundle["mlkem768"]))

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


def generate_bundle(name: str, suite: str) -> dict[str, Any]:
    """Fresh private keys for team ``name`` as a JSON-able bundle (what a key file holds)."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

    raw = {"encoding": ser.Encoding.Raw, "format": ser.PrivateFormat.Raw}
    raw["encryption_algorithm"] = ser.NoEncryption()
    bundle = {
        "format": KEY_FORMAT,
        "team": name,
        "suite": suite,
        "ed25519": to_b64(ed25519.Ed25519PrivateKey.generate().private_bytes(**raw)),
        "x25519": to_b64(x25519.X25519PrivateKey.generate().private_bytes(**raw)),
    }
    if suite == "hybrid":
        bundle["mldsa65"] = to_b64(os.urandom(32))  # ML-DSA-65 seed (FIPS 204 xi)
        bundle["mlkem768"] = to_b64(os.urandom(64))  # ML-KEM-768 seed (FIPS 203 d || z)
    return bundle
