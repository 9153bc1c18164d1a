"""Protocols that plugin objects satisfy, and the small value types they exchange.

The ``register`` callback of each registration hook checks objects against
these protocols (attributes present, ``name`` a valid identifier). Nothing
here imports torch: tensors cross these interfaces as ``torch.Tensor`` but
the type is only named in annotations.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from hub.errors import ValidationError

if TYPE_CHECKING:
    import torch

_VERSION_RE = re.compile(r"(?P<name>[^@]+?)(?:@(?P<version>latest|[0-9]{1,9}))?", re.ASCII)


@dataclass(frozen=True)
class AdapterRef:
    """A name and optional version: ``upper``, ``upper@3`` or ``upper@latest``."""

    name: str
    version: int | None = None

    @classmethod
    def parse(cls, text: str) -> AdapterRef:
        """Parse ``name``, ``name@N`` or ``name@latest`` (latest is ``version=None``)."""
        m = _VERSION_RE.fullmatch(text or "")
        if not m:
            raise ValidationError(
                f"adapter reference {text!r} is malformed: use NAME, NAME@VERSION or NAME@latest"
            )
        v = m.group("version")
        return cls(m.group("name"), None if v in (None, "latest") else int(v))

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"


@dataclass
class AdapterPayload:
    """An adapter held in memory: its files as bytes plus its manifest.

    ``files`` holds exactly what a PEFT adapter directory holds
    (``adapter_config.json``, ``adapter_model.safetensors``); nothing in it
    is ever unpickled.
    """

    name: str
    files: dict[str, bytes]
    version: int | None = None
    manifest: dict[str, Any] = field(default_factory=dict)

    CONFIG = "adapter_config.json"
    WEIGHTS = "adapter_model.safetensors"

    @property
    def ref(self) -> AdapterRef:
        return AdapterRef(self.name, self.version)

    def config(self) -> dict[str, Any]:
        """The parsed ``adapter_config.json``."""
        return json.loads(self.files[self.CONFIG])

    def tensors(self) -> dict[str, torch.Tensor]:
        """The adapter weights, parsed from safetensors bytes."""
        from safetensors.torch import load

        return load(self.files[self.WEIGHTS])

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in self.files.values())

    @classmethod
    def from_dir(cls, path: Path, name: str, version: int | None = None) -> AdapterPayload:
        """Read a PEFT adapter directory (safetensors + JSON only)."""
        from hub.adapter_dirs import MAX_WEIGHTS_FILE, read_regular  # never through a symlink

        path = Path(path)
        files = {}
        for fname in (cls.CONFIG, cls.WEIGHTS):
            p = path / fname
            if not p.is_file():
                raise ValidationError(f"{path} is not a PEFT adapter directory: {fname} is missing")
            files[fname] = read_regular(p, MAX_WEIGHTS_FILE)
        return cls(name=name, files=files, version=version)


@dataclass(frozen=True)
class AdapterRecord:
    """One stored adapter version as listed by a storage backend."""

    name: str
    version: int
    team: str
    created: str
    size: int
    base_fingerprint: str | None = None
    shared_with: tuple[str, ...] = ()


@runtime_checkable
class Quantizer(Protocol):
    """Loads a Hugging Face causal LM in low precision and saves/loads pre-quantized checkpoints."""

    name: str
    description: str

    def load(self, source: str | Path, options: Mapping[str, Any] | None = None) -> Any:
        """Load ``source`` (hub id or local path) quantized; returns a ``PreTrainedModel``."""

    def save(
        self, model: Any, out_dir: Path, manifest: Mapping[str, Any] | None = None
    ) -> Mapping[str, Any]:
        """Write a pre-quantized checkpoint (safetensors) to ``out_dir`` (absent or empty).

        Atomic (temp dir + rename). Writes :data:`hub.models.CHECKPOINT_MANIFEST`
        with ``method``, ``options``, ``base_fingerprint``, the sha256 of every
        file and library versions; ``manifest`` entries are added. Returns it.
        """

    def load_quantized(self, checkpoint: Path) -> Any:
        """Verify a checkpoint written by :meth:`save` (``IntegrityError`` naming a bad file)
        and load it without materialising full precision."""

    def footprint(self, model: Any) -> Mapping[str, Any]:
        """Bytes and bits per parameter of a loaded model: at least ``bytes`` and
        ``bits_per_param`` (whole model); ``quantized_bits_per_param`` for the quantized
        linear weights alone."""


@runtime_checkable
class AdapterMethod(Protocol):
    """Attaches trainable adapters to a base, and saves/loads them in PEFT format."""

    name: str
    description: str

    def attach(self, model: Any, options: Mapping[str, Any]) -> Any:
        """Return ``model`` wrapped with a fresh trainable adapter."""

    def load(self, model: Any, adapter: AdapterPayload, adapter_name: str) -> Any:
        """Attach the weights in ``adapter`` to ``model`` under ``adapter_name``."""

    def save(self, model: Any, out_dir: Path) -> None:
        """Write the trained adapter as a PEFT directory (safetensors + JSON)."""


@runtime_checkable
class OptimizerFactory(Protocol):
    """Builds an optimizer for the trainable parameters."""

    name: str
    description: str

    def build(self, params: Iterable[Any], *, lr: float, weight_decay: float = 0.0) -> Any:
        """Return a ``torch.optim.Optimizer`` over ``params``."""


@runtime_checkable
class StorageBackend(Protocol):
    """Keeps adapter versions, per team: bytes and records, no policy.

    Registered as a class; instantiated as ``cls(root, *, hub=None, settings=None,
    **options)`` (see :func:`hub.store.open_backend`): ``settings`` are the caller's
    effective settings (``--config`` included), from which a backend reads its own
    table. Options every backend accepts: ``team`` (default acting team),
    ``passphrase`` (string or zero-argument callable for a protected key file;
    backends without keys ignore it) and ``home`` (where ``teams/`` and ``trust/``
    live; default two levels above ``root``).

    The core (:mod:`hub.adapters`, which :func:`hub.store.open_store` puts in
    front of every backend) checks names, validates adapters, runs
    ``validate_adapter`` on store and load, fires ``adapter_published`` and
    ``adapter_loaded`` exactly once, and resolves the acting team; a backend
    does none of that. It allocates versions under a write lock, keeps
    per-version read lists, refuses pushes to a name another team owns and
    names that collide by case, and answers :class:`hub.errors.UnknownNameError`
    for anything the team may not read, as if absent. An optional
    ``capabilities`` attribute (see :data:`hub.adapters.CAPABILITIES`) says what
    it guarantees beyond that. An optional ``records`` attribute (a record
    store, e.g. :class:`hub.record_files.FolderRecords`) lets the core keep
    owner-signed names and read lists there (:mod:`hub.sharing`), which then
    decide every read instead of the backend's own lists.
    """

    name: str
    description: str

    def push(
        self,
        adapter: AdapterPayload,
        *,
        team: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        share_with: Iterable[str] = (),
    ) -> AdapterRef:
        """Store ``adapter`` as the next version of ``adapter.name``; never overwrites.

        Readers: ``team``, the teams that could read the previous latest version, ``share_with``.
        """

    def pull(
        self, ref: AdapterRef, *, team: str | None = None, where: str = "cli"
    ) -> AdapterPayload:
        """Return a stored version (``ref.version`` None = latest readable), verified, in memory."""

    def list(self, *, team: str | None = None) -> list[AdapterRecord]:
        """The versions ``team`` may read."""

    def share(self, ref: AdapterRef, *, team: str | None = None, with_team: str) -> AdapterRef:
        """Let ``with_team`` read ``ref`` (every version when unversioned); owner only."""

    def revoke(self, ref: AdapterRef, *, team: str | None = None, from_team: str) -> AdapterRef:
        """Stop ``from_team`` reading ``ref.name`` from now on; returns the newest version."""

    def delete(self, ref: AdapterRef, *, team: str | None = None) -> None:
        """Remove a version (or every version when ``ref.version`` is ``None``); owner only."""


@runtime_checkable
class Aggregator(Protocol):
    """Merges adapter updates from several teams in rounds (see docs/federated.md).

    A round lives in a shared directory; each role may run on its own machine
    and only exchanges files through it. ``sign(payload) -> dict`` and
    ``verify(team, payload, signatures)`` (raises ``IntegrityError``) come
    from the caller, so an aggregator needs no key store of its own.
    """

    name: str
    description: str

    def init_round(
        self,
        round_dir: Path,
        *,
        round_id: str,
        teams: Sequence[str],
        mode: str,
        key_dir: Path,
        params: Mapping[str, Any] | None = None,
        key_holder: str | None = None,
        sign: Callable[[bytes], Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Key holder: write the signed round manifest and public parameters to ``round_dir``
        (shared) and any secret key to ``key_dir`` (private); return the manifest."""

    def contribute(
        self,
        round_dir: Path,
        *,
        team: str,
        adapter: AdapterPayload,
        weight: float,
        sign: Callable[[bytes], Mapping[str, Any]] | None,
        verify: Callable[[str, bytes, Mapping[str, Any]], None] | None = None,
    ) -> Path:
        """A team: write its (encrypted) ``weight``-scaled update, signed and bound to the
        round, team, shapes and parameters; return the file written."""

    def aggregate(
        self, round_dir: Path, *, verify: Callable[[str, bytes, Mapping[str, Any]], None] | None
    ) -> Path:
        """Aggregator: check and combine every contribution without modifying any; return
        the aggregate file."""

    def finalize(
        self,
        round_dir: Path,
        *,
        key_dir: Path,
        name: str,
        rank: int | None = None,
        verify: Callable[[str, bytes, Mapping[str, Any]], None] | None = None,
    ) -> AdapterPayload:
        """Key holder: decrypt the aggregate and return the merged PEFT adapter (bf16);
        ``manifest["fed"]`` reports the round, teams, weights and mode details."""


PROTOCOLS: dict[str, type] = {
    "quantizer": Quantizer,
    "adapter": AdapterMethod,
    "optimizer": OptimizerFactory,
    "storage": StorageBackend,
    "aggregator": Aggregator,
}
"""Registry kind -> protocol its objects satisfy."""
