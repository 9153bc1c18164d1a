"""Built-in plugin ``ckks``: CKKS-encrypted adapter aggregation across teams (TenSEAL).

Registers the ``ckks`` aggregator and the ``fed`` commands (``init``,
``contribute``, ``aggregate``, ``finalize``) plus ``bench fed``. TenSEAL,
torch and numpy are imported inside the functions that need them. The maths
is in :mod:`hub.fed.modes`; see docs/federated.md.
"""

from __future__ import annotations

from typing import Any

from hub import hookimpl


def _codec() -> Any:
    from plugins.ckks.codec import CkksCodec

    return CkksCodec()


@hookimpl
def register_aggregators(register: Any) -> None:
    """Register ``ckks``."""
    from hub.fed.aggregator import RoundAggregator

    register(
        RoundAggregator(
            "ckks",
            "TenSEAL CKKS: teams encrypt weighted LoRA updates; the aggregator sums "
            "ciphertexts with a public context only",
            _codec,
        )
    )


@hookimpl
def register_commands(cli: Any) -> None:
    """Add ``fed init|contribute|aggregate|finalize`` and ``bench fed``."""
    from plugins.ckks.commands import add_fed_commands

    add_fed_commands(cli)
