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


_OK, _BAD_LOGITS, _BAD_PROBS = 0, 1, 2
_STATUS = {_BAD_LOGITS: NON_FINITE_LOGITS, _BAD_PROBS: NON_FINITE_PROBS}


def sample(
    logits: torch.Tensor, rows: Sequence[Row], stats: dict[str, int] | None = None
) -> list[Sampled | RowError]:
    """One :class:`Sampled` or :class:`RowError` per row of ``logits`` (see the module docstring).

    Everything is computed on ``logits``' device; the tokens, each row's status and the
    logprobs asked for come to the host in one transfer at the end (counted in
    ``stats["syncs"]`` when ``stats`` is given).

    Args:
        logits: ``(len(rows), vocab)`` float logits of the step's last position.
        rows: each row's sampling parameters, generator (on ``logits``' device) and
            generated tokens so far.
        stats: optional counters; ``"syncs"`` is incremented once.

    Returns:
        One entry per row, in order.
    """
    return sample_rows(logits, rows, stats)[1]


def sample_rows(
    logits: torch.Tensor, rows: Sequence[Row], stats: dict[str, int] | None = None
) -> tuple[torch.Tensor, list[Sampled | RowError]]:
    """:func:`sample`, plus the tokens as a ``(rows,)`` tensor on ``logits``' device.

    The step loop feeds that tensor back as the next input ids without a host round trip
    (a failed row's entry is meaningless).
    """
    tokens, status = _tokens(logits, rows)
    packed, k = _pack(logits, rows, tokens, status)
    if stats is not None:
        stats["syncs"] = stats.get("syncs", 0) + 1
    return tokens, _unpack(packed.tolist(), rows, k)


def _tokens(logits: torch.Tensor, rows: Sequence[Row]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row's token and status (``_OK``, ``_BAD_LOGITS``, ``_BAD_PROBS``), on the device."""
    tokens = logits.argmax(-1)
    status = (~torch.isfinite(logits).all(-1)).long() * _BAD_LOGITS
    picked = [i for i, row in enumerate(rows) if not _plain_greedy(row)]
    if picked:
        pairs = [_pick(logits[i], rows[i]) for i in picked]
        where = torch.tensor(picked, dtype=torch.long, device=logits.device)
        tokens = tokens.index_copy(0, where, torch.stack([t for t, _ in pairs]))
        own = torch.stack([st for _, st in pairs])
        # non-finite raw logits win, as they are checked first
        status = status.index_copy(0, where, torch.where(status[where] > 0, status[where], own))
    return tokens, status


def _pack(
    logits: torch.Tensor, rows: Sequence[Row], tokens: torch.Tensor, status: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """Tokens, statuses and logprobs in one float64 vector (ids below 2^53 are exact).

    Layout: ``tokens (n) | status (n) | per logprob row: chosen logprob, k top ids, k top
    logprobs``, with ``k`` the largest number of alternatives any row asked for.
    """
    parts = [tokens.double(), status.double()]
    want = [i for i, row in enumerate(rows) if row.logprobs is not None]
    k = min(max((rows[i].logprobs or 0 for i in want), default=0), logits.shape[-1])
    if want:
        where = torch.tensor(want, dtype=torch.long, device=logits.device)
        logp = torch.log_softmax(logits.index_select(0, where).float(), -1)
        chosen = logp.gather(1, tokens.index_select(0, where)[:, None])
        values, ids = logp.topk(k, -1) if k else (logp[:, :0], logp[:, :0])
        parts.append(torch.cat([chosen.double(), ids.double(), values.double()], 1).flatten())
    return torch.cat(parts), k


def _unpack(flat: list[float], rows: Sequence[Row], k: int) -> list[Sampled | RowError]:
    n = len(rows)
    out: list[Sampled | RowError] = []
    at = 2 * n
    for i, row in enumerate(rows):
        code, token = int(flat[n + i]), int(flat[i])
        block = flat[at : at + 1 + 2 * k] if row.logprobs is not None else None
        at += 0 if block is None else 1 + 2 * k
        if code != _OK:
            out.append(RowError(_STATUS[code]))
        elif block is None:
            out.append(Sampled(token))
        else:
            mine = min(row.logprobs, k)
            ids, values = block[1 : 1 + mine], block[1 + k : 1 + k + mine]
            top = tuple((int(t), v) for t, v in zip(ids, values, strict=True))
            out.append(Sampled(token, block[0], top))
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


def _pick(logits: torch.Tensor, row: Row) -> tuple[torch.Tensor, torch.Tensor]:
    """The row's token and status from its adjusted logits, both 0-d tensors on the device.

    Greedy takes the argmax; otherwise nucleus sampling with the row's generator, drawn as
    ``argmax(p / q)`` with ``q ~ Exp(1)``: exactly what ``torch.multinomial`` does for one
    sample, without its validity check (a host sync, and on CUDA a fatal device assert
    for a row whose probabilities are not finite: that row gets a status instead).
    """
    logits = adjusted(logits, row)
    bad_logits = ~torch.isfinite(logits).all()
    if row.temperature < GREEDY_BELOW:
        return logits.argmax(), bad_logits.long() * _BAD_LOGITS
    probs = torch.softmax(logits / row.temperature, -1)
    bad_probs = ~(torch.isfinite(probs).all() & (probs.sum() > 0))
    if row.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p >= row.top_p  # never drops the top token
        probs = torch.zeros_like(probs).scatter(0, order, sorted_p.masked_fill(drop, 0.0))
    q = torch.empty_like(probs).exponential_(1, generator=row.generator)
    token = (probs / q).argmax()
    code = torch.where(bad_logits, _BAD_LOGITS, torch.where(bad_probs, _BAD_PROBS, _OK))
    return token, code
