"""Per-row sampling: one step's logits and each row's parameters give one token per row.

Interface with the engine's step loop: :func:`sample` takes the step's last-position
logits ``(rows, vocab)`` and the rows (anything with the attributes of :class:`Row`,
such as ``server.engine.GenRequest``) and returns one entry per row, in row order:

- :class:`Sampled`: the token, and when the row asked for logprobs, the token's
  logprob and the row's top alternatives;
- :class:`RowError`: this row cannot go on (its logits or probabilities hold inf or
  NaN). The step loop finishes that row alone with ``RowError.message`` and carries
  on with the others.

:func:`sample` never raises because of one row's values; each row is handled on
its own, so one row's temperature, bias or adapter cannot change another row's token.

Order of operations for a row (OpenAI's): ``logit_bias`` is added, then
``frequency_penalty * count + presence_penalty * (count > 0)`` is subtracted per
token already generated, then greedy (``temperature`` below :data:`GREEDY_BELOW`)
takes the argmax, otherwise the logits are divided by ``temperature``, cut to the
``top_p`` nucleus and sampled with the row's own generator. Logprobs are those of
the model's own distribution (``log_softmax`` of the raw logits), before bias,
penalties and temperature, as vLLM reports them by default.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

GREEDY_BELOW = 1e-5
"""A ``temperature`` below this is greedy decoding (dividing by it would overflow)."""

NON_FINITE_LOGITS = (
    "the model produced non-finite logits (inf or NaN) for this request; "
    "the adapter's weights may be out of range"
)
NON_FINITE_PROBS = "sampling probabilities for this request are not finite (inf or NaN)"


class Row(Protocol):
    """What :func:`sample` reads from a row (``server.engine.GenRequest`` has all of it)."""

    temperature: float
    top_p: float
    presence_penalty: float
    frequency_penalty: float
    logit_bias: dict[int, float]
    logprobs: int | None  # None: no logprobs; k >= 0: the token's logprob and the top k
    generator: torch.Generator | None
    generated: list[int]


@dataclass(frozen=True)
class Sampled:
    """One row's token; ``logprob`` and ``top`` (id, logprob pairs) only when asked for."""

    token: int
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class RowError:
    """One row cannot continue; ``message`` says why (for that request's error)."""

    message: str


def sample(logits: torch.Tensor, rows: Sequence[Row]) -> list[Sampled | RowError]:
    """One :class:`Sampled` or :class:`RowError` per row of ``logits`` (see the module docstring).

    Args:
        logits: ``(len(rows), vocab)`` float logits of the step's last position.
        rows: each row's sampling parameters, generator and generated tokens so far.

    Returns:
        One entry per row, in order.
    """
    finite = torch.isfinite(logits).all(-1).tolist()
    greedy = logits.argmax(-1).tolist()
    out: list[Sampled | RowError] = []
    for i, row in enumerate(rows):
        if not finite[i]:
            out.append(RowError(NON_FINITE_LOGITS))
            continue
        token = greedy[i] if _plain_greedy(row) else _pick(logits[i], row)
        if isinstance(token, RowError) or row.logprobs is None:
            out.append(token if isinstance(token, RowError) else Sampled(token))
            continue
        out.append(_with_logprobs(logits[i], token, row.logprobs))
    return out


def _plain_greedy(row: Row) -> bool:
    return (
        row.temperature < GREEDY_BELOW
        and not row.logit_bias
        and not (row.generated and (row.presence_penalty or row.frequency_penalty))
    )


def adjusted(logits: torch.Tensor, row: Row) -> torch.Tensor:
    """One row's logits after ``logit_bias`` and the presence and frequency penalties."""
    if not row.logit_bias and not (
        row.generated and (row.presence_penalty or row.frequency_penalty)
    ):
        return logits
    logits = logits.clone()
    vocab = logits.shape[-1]
    for token, bias in row.logit_bias.items():
        if 0 <= token < vocab:
            logits[token] += bias
    if row.generated and (row.presence_penalty or row.frequency_penalty):
        counts = Counter(row.generated)
        ids = torch.tensor(list(counts), dtype=torch.long, device=logits.device)
        n = torch.tensor(list(counts.values()), dtype=logits.dtype, device=logits.device)
        logits[ids] -= row.frequency_penalty * n + row.presence_penalty
    return logits


def _pick(logits: torch.Tensor, row: Row) -> int | RowError:
    """The row's token from its adjusted logits: argmax when greedy, else nucleus sampling."""
    logits = adjusted(logits, row)
    if not bool(torch.isfinite(logits).all()):
        return RowError(NON_FINITE_LOGITS)
    if row.temperature < GREEDY_BELOW:
        return int(logits.argmax())
    probs = torch.softmax(logits / row.temperature, -1)
    if not bool(torch.isfinite(probs).all()) or not float(probs.sum()) > 0:
        return RowError(NON_FINITE_PROBS)
    if row.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < row.top_p  # always keeps the top token
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    # the generator lives on the CPU: sample there whatever device the model uses
    return int(torch.multinomial(probs.cpu(), 1, generator=row.generator)[0])


def _with_logprobs(logits: torch.Tensor, token: int, k: int) -> Sampled:
    logp = torch.log_softmax(logits.float(), -1)
    top: tuple[tuple[int, float], ...] = ()
    if k > 0:
        values, ids = logp.topk(min(k, logp.shape[-1]))
        top = tuple(zip(ids.tolist(), values.tolist(), strict=True))
    return Sampled(token, float(logp[token]), top)
