"""A round on shared storage: its directory layout, manifest, and the key holder's set-up.

Shared round directory (every role can read it; nothing secret in it)::

    round.json                   manifest, signed by the key holder
    public.context               TenSEAL context: public key only
    contributions/<team>.fedc    one signed file per team
    aggregate.fedc               the homomorphic sum

The secret context stays on the key holder's machine, in
``<home>/fed/keys/<round>/secret.context`` (mode 0600).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hub.atomic import atomic_write
from hub.errors import IntegrityError, UnknownNameError, ValidationError
from hub.fed.fedfile import Signer, Verifier, canonical
from hub.fed.modes import check_mode
from hub.fed.params import CkksParams

FORMAT = "qlora-hub-fed-round/1"
ROUND_FILE, PUBLIC_CONTEXT, SECRET_CONTEXT = "round.json", "public.context", "secret.context"
CONTRIBUTIONS, AGGREGATE = "contributions", "aggregate.fedc"
KEY_BINDING = "context.sha256"  # beside the secret: which public context it belongs to
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_name(kind: str, value: str) -> str:
    """Round ids and team names: 1-64 of letters, digits, ``._-`` (they become file names)."""
    if not _NAME_RE.match(value or ""):
        raise ValidationError(
            f"{kind} {value!r} is not valid: use 1-64 letters, digits, '.', '_' or '-'"
        )
    return value


@dataclass(frozen=True)
class Round:
    """A round as its manifest describes it."""

    dir: Path
    meta: dict[str, Any]

    @property
    def id(self) -> str:
        """The round id."""
        return self.meta["round"]

    @property
    def teams(self) -> list[str]:
        """Participating teams, in the order given to init."""
        return list(self.meta["teams"])

    @property
    def mode(self) -> str:
        """Merge mode: ffa, fedavg or dense."""
        return self.meta["mode"]

    @property
    def params(self) -> CkksParams:
        """The round's CKKS parameters."""
        return CkksParams.from_json(self.meta["params"])

    @property
    def key_holder(self) -> str:
        """The team that signed the round (and decrypts its aggregate)."""
        return str(self.meta["key_holder"])

    @property
    def start(self) -> dict[str, str] | None:
        """``{"ref", "sha256"}`` of the merged adapter this round starts from, or ``None``."""
        return self.meta.get("start")

    @property
    def context_sha256(self) -> str:
        """sha256 of the public context the manifest binds."""
        return self.meta["context_sha256"]

    def public_context(self) -> bytes:
        """The public context bytes, checked against the manifest's hash."""
        data = (self.dir / PUBLIC_CONTEXT).read_bytes()
        if hashlib.sha256(data).hexdigest() != self.context_sha256:
            raise IntegrityError(
                f"{self.dir / PUBLIC_CONTEXT} does not match round {self.id}'s manifest: "
                "the key holder must publish it again with 'qlora-hub fed init'"
            )
        return data

    def contribution_path(self, team: str) -> Path:
        """Where ``team``'s contribution lives in the round directory."""
        return self.dir / CONTRIBUTIONS / f"{team}.fedc"

    def require_team(self, team: str) -> str:
        """``team`` if it takes part in this round; else an error naming the participants."""
        if team not in self.meta["teams"]:
            raise UnknownNameError(
                f"team {team!r} is not part of round {self.id} (teams: "
                f"{', '.join(self.teams)}): the key holder lists teams with 'fed init --teams'"
            )
        return team


def init_round(
    round_dir: Path,
    key_dir: Path,
    *,
    round_id: str,
    teams: Sequence[str],
    mode: str,
    aggregator: str,
    params: CkksParams,
    keys: tuple[bytes, bytes],
    key_holder: str | None,
    sign: Signer | None,
    start: Mapping[str, Any] | None = None,
) -> Round:
    """Write a new round: manifest and public context to ``round_dir``, secret to ``key_dir``.

    The manifest (aggregator, mode, teams, CKKS parameters, public-context hash
    and the adapter the round starts from, ``start``) is signed by
    ``key_holder``; a round without that signature is refused by every role.
    """
    check_name("round id", round_id)
    check_mode(mode)
    seen: set[str] = set()
    for team in teams:
        check_name("team name", team)
        if team in seen:
            raise ValidationError(f"team {team!r} is listed twice in --teams: list each team once")
        seen.add(team)
    if len(teams) < 2:
        raise ValidationError("a round needs at least 2 teams: list them with --teams a,b,c")
    if not key_holder or sign is None:
        raise ValidationError(
            "a round must be signed by its key holder: pass --team HOLDER (key_holder and sign)"
        )
    check_name("key holder", key_holder)
    if start is not None:
        check_start(start)
    if (round_dir / ROUND_FILE).exists():
        raise ValidationError(
            f"round {round_id} already exists in {round_dir}: pick a new round id"
        )
    public, secret = keys
    meta = {
        "format": FORMAT,
        "round": round_id,
        "aggregator": aggregator,
        "mode": mode,
        "teams": list(teams),
        "params": params.to_json(),
        "params_sha256": params.digest(),
        "context_sha256": hashlib.sha256(public).hexdigest(),
        "key_holder": key_holder,
        "start": dict(start) if start else None,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (round_dir / CONTRIBUTIONS).mkdir(parents=True, exist_ok=True)
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if secret:
        atomic_write(key_dir / SECRET_CONTEXT, secret, mode=0o600)
    atomic_write(key_dir / KEY_BINDING, meta["context_sha256"].encode())
    atomic_write(round_dir / PUBLIC_CONTEXT, public)
    signatures = dict(sign(canonical(meta)))
    doc = {"meta": meta, "signatures": signatures}
    atomic_write(round_dir / ROUND_FILE, json.dumps(doc, indent=2).encode())
    return Round(round_dir, meta)


def open_round(
    round_dir: Path, *, verify: Verifier | None = None, key_holder: str | None = None
) -> Round:
    """Read a round's manifest, refusing one its key holder did not sign.

    Args:
        round_dir: the shared round directory.
        verify: checks the key holder's signature against a trust store; every
            CLI role passes one (Python callers without one get the structural
            checks only: a named key holder and a signature present).
        key_holder: the team the caller expects to have signed the round
            (``fed contribute --key-holder``); any other signer is refused.
    """
    path = Path(round_dir) / ROUND_FILE
    if not path.is_file():
        raise UnknownNameError(
            f"no round in {round_dir}: the key holder starts one with 'qlora-hub fed init'"
        )
    try:
        doc = json.loads(path.read_text())
        meta: Mapping[str, Any] = doc["meta"]
        signatures = doc.get("signatures")
        if meta.get("format") != FORMAT or not isinstance(signatures, dict | None):
            raise ValueError
        for key in ("round", "aggregator", "mode", "teams", "params", "context_sha256"):
            meta[key]  # noqa: B018 (presence check)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValidationError(f"{path} is not a qlora-hub round manifest") from None
    holder = meta.get("key_holder")
    if not holder or not signatures:
        raise IntegrityError(
            f"{path} is not signed by a key holder: refuse this round and ask the key holder "
            "to start it again with 'qlora-hub fed init --team HOLDER'"
        )
    if key_holder is not None and holder != key_holder:
        raise IntegrityError(
            f"round {meta['round']} is signed by team {holder!r}, not by the key holder you "
            f"expect ({key_holder!r}): do not contribute; check with {key_holder!r}"
        )
    if verify is not None:
        verify(str(holder), canonical(meta), signatures)
    if meta.get("start") is not None:
        check_start(meta["start"])
    return Round(Path(round_dir), dict(meta))


def check_start(start: Any) -> dict[str, str]:
    """The adapter a round starts from: ``{"ref": "NAME@VERSION", "sha256": HEX}``."""
    ok = isinstance(start, Mapping) and isinstance(start.get("ref"), str)
    digest = start.get("sha256") if ok else None
    if not (ok and isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
        raise ValidationError(
            f"round start {start!r} is not {{ref, sha256}}: pass 'fed init --start NAME@VERSION'"
        )
    return {"ref": start["ref"], "sha256": digest}


def secret_context(key_dir: Path, rnd: Round) -> bytes:
    """The key holder's secret context for ``rnd`` (empty bytes for an unencrypted round)."""
    binding = Path(key_dir) / KEY_BINDING
    if not binding.is_file():
        raise UnknownNameError(
            f"no secret key for round {rnd.id} in {key_dir}: finalize on the key holder's "
            "machine (the home that ran 'fed init')"
        )
    if binding.read_text().strip() != rnd.context_sha256:
        raise IntegrityError(
            f"the secret key in {key_dir} belongs to another context than round {rnd.id}'s "
            "public.context: the round directory was replaced; start a new round"
        )
    path = Path(key_dir) / SECRET_CONTEXT
    return path.read_bytes() if path.is_file() else b""
