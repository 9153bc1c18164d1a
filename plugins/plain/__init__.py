"""Built-in plugin ``plain``: the unencrypted reference aggregator.

Same rounds, files, signatures, checks and merge maths as ``ckks`` (it reuses
:class:`hub.fed.aggregator.RoundAggregator`), with float64 chunks in the
clear. Use it to check ``ckks`` results and to measure what encryption costs;
never for real cross-team merges, since the aggregator sees every update.
"""

from __future__ import annotations

from typing import Any

from hub import hookimpl


def _codec() -> Any:
    from plugins.plain.codec import PlainCodec

    return PlainCodec()


@hookimpl
def register_aggregators(register: Any) -> None:
    """Register ``plain``."""
    from hub.fed.aggregator import RoundAggregator

    register(
        RoundAggregator(
            "plain",
            "Reference aggregator without encryption (same maths as ckks; for checks and benchmarks)",
            _codec,
        )
    )
