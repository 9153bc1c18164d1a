"""The adapter lifecycle: every push, pull, share, revoke, delete, import and export.

Storage backends keep bytes and records; the rules live here, the same for
every backend:

- one name grammar (:mod:`hub.names`) for adapters and teams;
- adapter validation (:mod:`hub.validation`) and the ``validate_adapter``
  hooks on store *and* load;
- the lifecycle hooks ``adapter_published`` and ``adapter_loaded``, fired
  exactly once per operation, here and nowhere else;
- the acting team (``team=`` argument, else the default given when opening,
  else setting ``hub.team``, else ``$QLORA_HUB_TEAM``);
- the authorization decision (:meth:`Adapters.authorize`): owner-only
  actions, and a pulled version must be the one that was asked for;
- signed sharing (:mod:`hub.sharing`) for a backend that offers a record
  store and does not sign by itself: who owns a name and who reads which
  version then follow from owner-signed records, whatever the backend's
  own rows say;
- owner-qualified references, ``alpha/upper``: only a version whose signed
  owner is ``alpha`` is served (:func:`hub.names.split_owner`).

:func:`hub.store.open_store` returns an :class:`Adapters` around the
configured backend, so the CLI, the trainer, the server and the federated
commands all go through this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hub.errors import AccessError, ConfigError, IntegrityError, UnknownNameError, ValidationError
from hub.names import check_name, check_team_name, split_owner
from hub.types import AdapterPayload, AdapterRecord, AdapterRef
from hub.validation import Limits, check_adapter, run_policy_hooks

TEAM_ENV = "QLORA_HUB_TEAM"
MAX_METADATA_BYTES = 64 << 10
_FINGERPRINT = re.compile(r"[0-9a-f]{64}|hf:[A-Za-z0-9._/-]{1,200}", re.ASCII)

CAPABILITIES = {
    "encrypted": "payloads are encrypted at rest",
    "signed": "manifests are signed by the publishing team and verified on every read",
    "revoke_reencrypts": "revoke re-encrypts the content under a new key for the remaining teams",
}
"""What a backend may declare in its ``capabilities`` attribute (a set of these names).
The commands claim only what the backend declares."""

OWNER_ACTIONS = frozenset({"push", "share", "revoke", "delete"})
READ_ACTIONS = frozenset({"pull", "export", "verify", "show"})


def capabilities(backend: Any) -> frozenset[str]:
    """The capabilities ``backend`` declares (none when it declares nothing)."""
    return frozenset(getattr(backend, "capabilities", ()) or ())


def check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """``metadata`` as a plain dict: JSON, under 64 KiB, a well-formed base fingerprint."""
    meta = dict(metadata or {})
    try:
        size = len(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"metadata must be JSON under 64 KiB ({exc})") from None
    if size > MAX_METADATA_BYTES:
        raise ValidationError(f"metadata must be JSON under 64 KiB (it is {size} bytes)")
    fp = meta.get("base_fingerprint")
    if fp is not None and not (isinstance(fp, str) and _FINGERPRINT.fullmatch(fp)):
        raise ValidationError(
            f"base_fingerprint {str(fp)[:80]!r} is not a base fingerprint (64 hex digits, or "
            "hf:MODEL_ID): pass --base with the base model directory or its fingerprint"
        )
    return meta


class Adapters:
    """The core's view of one storage backend: the rules, then the backend's storage.

    It satisfies :class:`hub.types.StorageBackend` itself, so code written
    against a backend works unchanged.

    Args:
        hub: the plugin host whose hooks run (``None``: no hooks).
        backend: the storage backend instance.
        team: default acting team.
        limits: validation bounds (default: settings ``adapters.*`` when opened
            through :func:`hub.store.open_store`).
    """

    def __init__(
        self,
        hub: Any,
        backend: Any,
        *,
        team: str | None = None,
        limits: Limits | None = None,
        home: Path | None = None,
        passphrase: Any = None,
    ) -> None:
        self.hub, self.backend = hub, backend
        self.team = team
        self.limits = limits or Limits()
        self.sharing = None
        records = getattr(backend, "records", None)
        if records is not None and "signed" not in capabilities(backend):
            from hub.sharing import SignedSharing

            home = home or getattr(backend, "home", None)
            if home is None:
                raise ConfigError(
                    f"storage backend {backend.name!r} offers a record store but no home "
                    "(where team keys live): open it with hub.store.open_store"
                )
            self.sharing = SignedSharing(records, Path(home), hub=hub, passphrase=passphrase)

    def __repr__(self) -> str:
        return f"Adapters({self.backend!r})"

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def description(self) -> str:
        return self.backend.description

    @property
    def capabilities(self) -> frozenset[str]:
        """What the backend declares it does (see :data:`CAPABILITIES`), plus ``signed``
        when the core keeps its sharing state signed (:mod:`hub.sharing`)."""
        caps = capabilities(self.backend)
        return caps | {"signed"} if self.sharing is not None else caps

    # -- the rules ---------------------------------------------------------------------
    def acting(self, team: str | None = None) -> str:
        """The acting team: ``team``, else the default, else ``$QLORA_HUB_TEAM``; checked."""
        team = team or self.team or os.environ.get(TEAM_ENV) or None
        if not team:
            raise ConfigError(f"no acting team: pass --team NAME or set {TEAM_ENV}")
        return check_team_name(team)

    def unqualified(self, ref: AdapterRef) -> tuple[str | None, AdapterRef]:
        """(owner or None, the ref without it) for ``ref`` or ``owner/ref``; names checked."""
        owner, name = split_owner(ref.name)
        return owner, AdapterRef(name, ref.version)

    def _own(self, ref: AdapterRef, team: str) -> AdapterRef:
        """``ref`` without an owner prefix, which may only name the acting team."""
        owner, ref = self.unqualified(ref)
        if owner is not None and owner != team:
            raise AccessError(
                f"{owner}/{ref.name} belongs to team {owner!r}: team {team!r} can change only "
                "its own adapters"
            )
        return ref

    @staticmethod
    def _check_owner(owner: str | None, payload: AdapterPayload) -> None:
        publisher = (payload.manifest or {}).get("publisher")
        if owner is not None and publisher != owner:
            raise UnknownNameError(
                f"no adapter {owner}/{payload.name}: {payload.name!r} is owned by team "
                f"{publisher!r}, not {owner!r} (re-claimed after its records were deleted?)"
            )

    def authorize(self, action: str, team: str, ref: AdapterRef) -> None:
        """The one authorization decision the core makes before asking the backend.

        ``share``, ``revoke`` and ``delete`` are the owner's: refused with
        :class:`AccessError` when the versions of ``ref.name`` that ``team`` can
        see were published by another team, and "unknown" when ``team`` sees no
        version (names do not leak). ``push`` to a name another team owns is
        decided by the backend, which holds the owner record (the contract suite
        checks every backend refuses it); reads are decided by the backend's read
        lists, then checked by :meth:`pull` (the version returned must be the one
        asked for, and must validate).
        """
        if action in READ_ACTIONS or action == "push":
            return
        if action not in OWNER_ACTIONS:
            raise ValueError(f"unknown action {action!r}")
        if self.sharing is not None:
            self.sharing.owned(ref.name, team)
            return
        owners = {r.team for r in self.backend.list(team=team) if r.name == ref.name}
        if not owners:
            raise UnknownNameError(
                f"no adapter named {ref.name!r} visible to team {team!r}: check `adapters list`"
            )
        if owners != {team}:
            owner = sorted(owners - {team})[0]
            raise AccessError(
                f"adapter {ref.name!r} belongs to team {owner!r}: only it can share, revoke "
                "or delete"
            )

    def validate(self, adapter: AdapterPayload) -> None:
        """Every check on ``adapter``: name, files, tensors, bounds, then the policy hooks."""
        check_name(adapter.name)
        check_adapter(adapter, self.limits)
        run_policy_hooks(self.hub, adapter)

    # -- the StorageBackend protocol ---------------------------------------------------
    def push(
        self,
        adapter: AdapterPayload,
        *,
        team: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        share_with: Iterable[str] = (),
    ) -> AdapterRef:
        """Validate ``adapter``, store it as the next version, fire ``adapter_published`` once.

        ``metadata["base_fingerprint"]`` defaults to the adapter manifest's, so the
        server's base check runs on every published version.
        """
        team = self.acting(team)
        own = self._own(AdapterRef(adapter.name), team)
        if own.name != adapter.name:
            adapter = AdapterPayload(own.name, adapter.files, adapter.version, adapter.manifest)
        self.validate(adapter)
        meta = check_metadata(metadata)
        base = (adapter.manifest or {}).get("base_fingerprint")
        if base and "base_fingerprint" not in meta:
            meta = check_metadata({**meta, "base_fingerprint": base})
        readers = sorted({check_team_name(t) for t in share_with})
        self.authorize("push", team, AdapterRef(adapter.name))
        if self.sharing is None:
            ref = self.backend.push(adapter, team=team, metadata=meta, share_with=readers)
        else:
            state = self.sharing.claim(adapter.name, team)
            signed = state.next_readers(readers)
            others = sorted(signed - {team})
            ref = self.backend.push(adapter, team=team, metadata=meta, share_with=others)
        if ref.name != adapter.name or ref.version is None:
            raise IntegrityError(f"storage stored {ref} for {adapter.name!r}")
        if self.sharing is not None:
            self.sharing.publish(state, adapter, ref.version, meta, signed)
        published = {
            "name": ref.name,
            "version": ref.version,
            "publisher": team,
            "base_fingerprint": meta.get("base_fingerprint"),
            "files": {n: hashlib.sha256(b).hexdigest() for n, b in sorted(adapter.files.items())},
            "metadata": meta,
        }
        self._fire("adapter_published", ref=ref, team=team, manifest=published)
        return ref

    def pull(
        self, ref: AdapterRef, *, team: str | None = None, where: str = "cli"
    ) -> AdapterPayload:
        """Fetch ``ref`` (latest readable when unversioned), check it is the version asked
        for, validate it like a push, and fire ``adapter_loaded`` once."""
        team = self.acting(team)
        owner, ref = self.unqualified(ref)
        state = None
        if self.sharing is not None:
            state, version = self.sharing.resolve(ref, team)
            ref = AdapterRef(ref.name, version)
        payload = self.backend.pull(ref, team=team, where=where)
        if payload.name != ref.name or (ref.version is not None and payload.version != ref.version):
            raise IntegrityError(
                f"storage returned {payload.name}@{payload.version} when asked for {ref}"
            )
        if state is not None:
            payload = self.sharing.check_payload(payload, state)
        self._check_owner(owner, payload)
        self.validate(payload)
        self._fire("adapter_loaded", ref=payload.ref, team=team, where=where)
        return payload

    def list(self, *, team: str | None = None) -> list[AdapterRecord]:
        """The versions the acting team may read (by the signed records, when the core keeps them)."""
        if self.sharing is not None:
            return self.sharing.readable(self.acting(team))
        return self.backend.list(team=self.acting(team))

    def share(self, ref: AdapterRef, *, team: str | None = None, with_team: str) -> AdapterRef:
        """Let ``with_team`` read ``ref`` (every version when unversioned); owner only."""
        team = self.acting(team)
        ref = self._own(ref, team)
        with_team = check_team_name(with_team)
        self.authorize("share", team, ref)
        if self.sharing is None:
            return self.backend.share(ref, team=team, with_team=with_team)
        state = self.sharing.owned(ref.name, team)
        versions = state.live() if ref.version is None else [ref.version]
        if not versions or not set(versions) <= set(state.live()):
            raise UnknownNameError(f"no adapter {ref}: check `adapters list`")
        self.backend.share(ref, team=team, with_team=with_team)
        self.sharing.share(state, versions, with_team)
        return AdapterRef(ref.name, versions[-1])

    def revoke(self, ref: AdapterRef, *, team: str | None = None, from_team: str) -> AdapterRef:
        """Stop ``from_team`` reading ``ref.name`` from now on; owner only."""
        team = self.acting(team)
        ref = self._own(ref, team)
        from_team = check_team_name(from_team)
        if from_team == team:
            raise ValidationError("a team cannot revoke its own access: delete the adapter instead")
        self.authorize("revoke", team, ref)
        if self.sharing is None:
            return self.backend.revoke(ref, team=team, from_team=from_team)
        state = self.sharing.owned(ref.name, team)
        self.sharing.revoke(state, from_team)  # signed first: it decides every later read
        self.backend.revoke(ref, team=team, from_team=from_team)
        live = state.live()
        return AdapterRef(ref.name, live[-1] if live else None)

    def delete(self, ref: AdapterRef, *, team: str | None = None) -> None:
        """Remove a version (every version when unversioned); owner only."""
        team = self.acting(team)
        ref = self._own(ref, team)
        self.authorize("delete", team, ref)
        if self.sharing is None:
            self.backend.delete(ref, team=team)
            return
        state = self.sharing.owned(ref.name, team)
        versions = state.live() if ref.version is None else [ref.version]
        if not versions or not set(versions) <= set(state.live()):
            raise UnknownNameError(f"no adapter {ref}: check `adapters list`")
        self.backend.delete(ref, team=team)
        self.sharing.delete(state, versions)

    # -- beyond the protocol ------------------------------------------------------------
    def verify(self, ref: AdapterRef, *, team: str | None = None) -> dict[str, Any]:
        """Every check a pull makes, without keeping the plaintext; a summary."""
        payload = self.pull(ref, team=team, where="verify")
        return {
            "ref": str(payload.ref),
            "publisher": (payload.manifest or {}).get("publisher"),
            "files": len(payload.files),
            "bytes": payload.nbytes,
            "signed": "signed" in self.capabilities,
            "ok": True,
        }

    def show(self, ref: AdapterRef, *, team: str | None = None) -> dict[str, Any]:
        """The stored manifest of ``ref`` and who can read it, when the backend keeps one."""
        team = self.acting(team)
        owner, ref = self.unqualified(ref)
        if self.sharing is not None:
            state, version = self.sharing.resolve(ref, team)
            grant = state.versions[version]
            shown = {
                "manifest": self.sharing.manifest(state, version),
                "readers": {
                    t: "active" if t in grant.readers else "revoked" for t in sorted(grant.ever)
                },
            }
            if owner is not None and state.owner != owner:
                raise UnknownNameError(f"no adapter {owner}/{ref.name}: it is {state.owner!r}'s")
            return shown
        if not hasattr(self.backend, "show"):
            raise ConfigError(f"storage backend {self.name!r} has no manifests to show")
        shown = self.backend.show(ref, team=team)
        publisher = (shown.get("manifest") or {}).get("publisher")
        if owner is not None and publisher != owner:
            raise UnknownNameError(f"no adapter {owner}/{ref.name}: it is {publisher!r}'s")
        return shown

    def export(self, ref: AdapterRef, out: Path, *, team: str | None = None) -> AdapterPayload:
        """Pull and validate ``ref``, then write it as a plain PEFT directory at ``out``."""
        from hub.adapter_dirs import write_dir_atomically

        out = Path(out)
        if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
            raise ValidationError(f"{out} exists and is not empty: choose a new directory")
        payload = self.pull(ref, team=team, where="export")
        write_dir_atomically(out, payload.files)
        return payload

    def import_dir(
        self,
        directory: Path,
        name: str,
        *,
        team: str | None = None,
        base: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        share_with: Iterable[str] = (),
    ) -> AdapterRef:
        """Read a PEFT directory (or a training run), record its base, and push it.

        ``base`` is a base model directory or its fingerprint; without it the
        base fingerprint comes from the trainer's manifest when there is one.
        """
        from hub.adapter_dirs import import_metadata, read_adapter_dir

        payload, found = read_adapter_dir(Path(directory), name)
        meta = import_metadata(found, base, metadata)
        return self.push(payload, team=team, metadata=meta, share_with=share_with)

    def _fire(self, hook: str, **kwargs: Any) -> None:
        if self.hub is not None:
            getattr(self.hub.pm.hook, hook)(**kwargs)
