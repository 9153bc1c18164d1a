"""The round-based aggregator object registered as ``ckks`` (and, with a plain codec, ``plain``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hub.types import AdapterPayload
from plugins.ckks.aggregate import aggregate_round
from plugins.ckks.contribute import write_contribution
from plugins.ckks.fedfile import Signer, Verifier
from plugins.ckks.finalize import finalize_round
from plugins.ckks.params import CkksParams, check_params
from plugins.ckks.round import init_round, open_round, secret_context


class RoundAggregator:
    """Implements :class:`hub.types.Aggregator` over a chunk codec.

    The codec decides what a chunk is (a CKKS ciphertext, or float64 bytes
    for the plaintext reference); rounds, files, signatures, checks and merge
    maths are shared, so ``plain`` checks ``ckks`` on exactly the same path.

    Args:
        name: registry name.
        description: one line for ``qlora-hub plugins``.
        codec: a factory returning the codec (called lazily, so TenSEAL is
            imported only when a round runs).
    """

    def __init__(self, name: str, description: str, codec: Any) -> None:
        self.name = name
        self.description = description
        self._codec_factory = codec
        self._codec: Any = None

    @property
    def codec(self) -> Any:
        """The chunk codec, built on first use (TenSEAL is imported only then)."""
        if self._codec is None:
            self._codec = self._codec_factory()
        return self._codec

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
        sign: Signer | None = None,
        insecure_for_tests: bool = False,
    ) -> dict[str, Any]:
        """Key holder: see :meth:`hub.types.Aggregator.init_round`."""
        p = check_params(
            CkksParams.from_json(params) if params else CkksParams(),
            insecure_for_tests=insecure_for_tests,
        )
        rnd = init_round(
            Path(round_dir),
            Path(key_dir),
            round_id=round_id,
            teams=list(teams),
            mode=mode,
            aggregator=self.name,
            params=p,
            keys=self.codec.keygen(p),
            key_holder=key_holder,
            sign=sign,
        )
        return dict(rnd.meta)

    def contribute(
        self,
        round_dir: Path,
        *,
        team: str,
        adapter: AdapterPayload,
        weight: float,
        sign: Signer | None,
        verify: Verifier | None = None,
        progress: bool = False,
    ) -> Path:
        """A team: see :meth:`hub.types.Aggregator.contribute`."""
        rnd = open_round(Path(round_dir), verify=verify)
        return write_contribution(
            rnd,
            self.codec,
            team=team,
            adapter=adapter,
            weight=weight,
            sign=sign,
            progress=progress,
        )

    def aggregate(
        self, round_dir: Path, *, verify: Verifier | None, progress: bool = False
    ) -> Path:
        """Aggregator: see :meth:`hub.types.Aggregator.aggregate`."""
        rnd = open_round(Path(round_dir), verify=verify)
        return aggregate_round(rnd, self.codec, verify=verify, progress=progress)

    def finalize(
        self,
        round_dir: Path,
        *,
        key_dir: Path,
        name: str,
        rank: int | None = None,
        verify: Verifier | None = None,
        progress: bool = False,
    ) -> AdapterPayload:
        """Key holder: see :meth:`hub.types.Aggregator.finalize`."""
        rnd = open_round(Path(round_dir), verify=verify)
        secret = secret_context(Path(key_dir), rnd)
        return finalize_round(
            rnd, self.codec, secret, name=name, rank=rank, verify=verify, progress=progress
        )
