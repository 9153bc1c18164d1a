"""Signing round files with team identities (:mod:`hub.teams`) and checking them against the trust store.

Signatures are ``{"team", "suite", "signature"}`` with the signature base64;
hybrid teams sign with Ed25519 and ML-DSA-65 and both must verify. The
domain-separation context ``"fed"`` keeps a round signature from ever being
replayed as a vault manifest signature (and the signed ``format`` field keeps
a round manifest from passing as a contribution).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hub.errors import IntegrityError
from hub.fed.fedfile import Signer, Verifier

CONTEXT = "fed"


def team_signer(home: Path, team: str, *, hub: Any = None) -> Signer:
    """A signer for ``team`` using its private keys (key_provider hook, then key file)."""
    from hub.teams import load_identity

    ident = load_identity(Path(home), team, hub=hub, purpose="fed")

    def sign(data: bytes) -> dict[str, Any]:
        sig = ident.sign(data, CONTEXT)
        return {"team": team, "suite": ident.suite, "signature": base64.b64encode(sig).decode()}

    return sign


def trust_store_verifier(home: Path) -> Verifier:
    """A verifier that accepts a team's signature only with the key in ``home``'s trust store."""
    from hub.identity import verify
    from hub.teams import trusted

    def check(team: str, data: bytes, signatures: Mapping[str, Any]) -> None:
        if signatures.get("team") != team:
            raise IntegrityError(
                f"a file for team {team!r} is signed by {signatures.get('team')!r}: "
                f"team {team!r} must sign its own contribution"
            )
        try:
            sig = base64.b64decode(str(signatures.get("signature", "")), validate=True)
        except (binascii.Error, ValueError):
            raise IntegrityError(f"the signature of team {team!r} is not valid base64") from None
        verify(trusted(Path(home), team), data, sig, CONTEXT)

    return check
