"""The round-based aggregator object registered as ``ckks`` (and, with a plain codec, ``plain``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hub.errors import IntegrityError
from hub.fed.aggregate import aggregate_round
from hub.fed.contribute import write_contribution
from hub.fed.fedfile import Signer, Verifier
from hub.fed.finalize import finalize_round
from hub.fed.params import CkksParams, check_params
from hub.fed.round import Round, init_round, open_round, secret_context
from hub.types import AdapterPayload


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
        start: Mapping[str, Any] | None = None,
        insecure_for_tests: bool = False,
    ) -> dict[str, Any]:
        """Key holder: see :meth:`hub.types.Aggregator.init_round`.

        ``start`` (``{"ref", "sha256"}``) names the merged adapter of the
        previous round that every team must train from (chained rounds).
        """
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
            start=start,
        )
        return dict(rnd.meta)

    def open(
        self, round_dir: Path, *, verify: Verifier | None, key_holder: str | None = None
    ) -> Round:
        """The round in ``round_dir``, signed by its key holder and started for this aggregator."""
        rnd = open_round(Path(round_dir), verify=verify, key_holder=key_holder)
        if rnd.meta["aggregator"] != self.name:
            raise IntegrityError(
                f"round {rnd.id} was started for the {rnd.meta['aggregator']!r} aggregator, "
                f"not {self.name!r}: use the round's own aggregator"
            )
        return rnd

    def contribute(
        self,
        round_dir: Path,
        *,
        team: str,
        adapter: AdapterPayload,
        weight: float,
        sign: Signer | None,
        verify: Verifier | None = None,
        key_holder: str | None = None,
        start_sha256: str | None = None,
        progress: bool = False,
    ) -> Path:
        """A team: see :meth:`hub.types.Aggregator.contribute`.

        ``key_holder`` pins the team that must have signed the round;
        ``start_sha256`` is the sha256 of the adapter weights this adapter was
        trained from (refused when the round starts from another adapter).
        """
        rnd = self.open(round_dir, verify=verify, key_holder=key_holder)
        return write_contribution(
            rnd,
            self.codec,
            team=team,
            adapter=adapter,
            weight=weight,
            sign=sign,
            start_sha256=start_sha256,
            progress=progress,
        )

    def aggregate(
        self, round_dir: Path, *, verify: Verifier | None, progress: bool = False
    ) -> Path:
        """Aggregator: see :meth:`hub.types.Aggregator.aggregate`."""
        rnd = self.open(round_dir, verify=verify)
        return aggregate_round(rnd, self.codec, verify=verify, progress=progress)

    def finalize(
        self,
        round_dir: Path,
        *,
        key_dir: Path,
        name: str,
        rank: int | None = None,
        verify: Verifier | None = None,
        key_holder: str | None = None,
        raw_sum: bool = False,
        progress: bool = False,
    ) -> AdapterPayload:
        """Key holder: see :meth:`hub.types.Aggregator.finalize`.

        The result is the weighted mean ``sum_k w_k x_k / sum_k w_k`` (FedAvg);
        ``raw_sum=True`` keeps the weighted sum ``sum_k w_k x_k``.
        """
        rnd = self.open(round_dir, verify=verify, key_holder=key_holder)
        secret = secret_context(Path(key_dir), rnd)
        return finalize_round(
            rnd,
            self.codec,
            secret,
            name=name,
            rank=rank,
            verify=verify,
            raw_sum=raw_sum,
            progress=progress,
        )
