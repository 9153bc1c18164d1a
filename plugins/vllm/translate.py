"""Between the hub's :class:`~hub.engines.GenRequest` and vLLM's types, one request at a time.

A request goes in as vLLM ``SamplingParams`` (:func:`sampling_params`: the request's
sampling fields, end-of-sequence tokens as vLLM's stop tokens, deltas without vLLM's
detokenizer). Each output delta comes back through :func:`record_delta`, which records
the new tokens and their logprobs on the request and streams its text through
``GenRequest.emit``, so stop strings, held-back partial characters and finish reasons
are exactly the built-in engine's. :func:`worker_message` turns vLLM's wrapped worker
error into the one line an adapter refusal shows.

Nothing here holds state or touches vLLM's loop: :mod:`plugins.vllm.engine` does.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from hub.engines import GenRequest


@dataclass(frozen=True)
class TokenLogprob:
    """One token's logprob and its top alternatives (the fields the server reads)."""

    token: int
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] = ()


def sampling_params(req: GenRequest, eos_ids: set[int]) -> Any:
    """vLLM's ``SamplingParams`` for ``req``; ``eos_ids`` stop it (none: it runs to max_tokens)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(
        max_tokens=req.max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        seed=req.seed,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        logit_bias=dict(req.logit_bias) or None,
        logprobs=req.logprobs,
        stop_token_ids=sorted(eos_ids),
        ignore_eos=not eos_ids,  # no end tokens at all: run to max_tokens (benchmarks)
        output_kind=RequestOutputKind.DELTA,
        detokenize=False,
    )


def record_delta(req: GenRequest, comp: Any, eos_ids: set[int], tokenizer: Any) -> str | None:
    """Record new tokens of ``comp`` (a delta) on ``req`` and stream its text.

    Returns:
        The finish reason ``GenRequest.emit`` settled on (``stop``, ``length``), or None
        while the request goes on.
    """
    now = time.monotonic()
    if req.first_token_at is None:
        req.first_token_at = now
    req.last_token_at = now
    new = list(comp.token_ids)
    req.generated.extend(new)
    if req.logprobs is not None and comp.logprobs:
        for token, entries in zip(new, comp.logprobs, strict=False):
            req.token_logprobs.append(token_logprob(token, entries, req.logprobs))
    reason = None
    if any(t in eos_ids for t in new) or comp.finish_reason == "stop":
        reason = "stop"
    elif comp.finish_reason == "length" or len(req.generated) >= req.max_tokens:
        reason = "length"
    ids = [t for t in req.generated if t not in eos_ids]
    return req.emit(tokenizer.decode(ids, skip_special_tokens=True), reason)


def token_logprob(token: int, entries: dict[int, Any], k: int) -> TokenLogprob:
    """vLLM's logprobs of one position -> the token's logprob and the top ``k``."""
    chosen = entries.get(token)
    ranked = sorted(entries.items(), key=lambda kv: kv[1].rank or 0)
    top = tuple((t, float(lp.logprob)) for t, lp in ranked if lp.rank and lp.rank <= k)
    return TokenLogprob(token, float(chosen.logprob) if chosen else None, top)


def worker_message(exc: BaseException) -> str:
    """The worker's own message inside vLLM's wrapped error (one line)."""
    text = str(exc)
    found = re.search(r"Worker failed with error '(.*?)'(?:, please|$)", text, re.S)
    line = (found.group(1) if found else text).strip().splitlines()
    return line[0] if line else type(exc).__name__
