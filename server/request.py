"""What the engine is handed: one generation request (:class:`GenRequest`), and the error
a full queue raises. Re-exported by :mod:`server.engine`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from server.sampling import Sampled


class QueueFullError(Exception):
    """The engine's queue is at ``max_queue``: the caller should retry later (HTTP 429)."""


@dataclass
class GenRequest:
    """One generation request as the engine sees it.

    ``on_event`` is called from the engine thread with ``("delta", text, tokens)``
    (``tokens``: how many tokens were generated when ``text`` was sent), then once with
    ``("done", finish_reason, usage)`` or ``("error", message, usage)``. The sampling
    fields are read by :func:`server.sampling.sample`.
    """

    prompt_ids: list[int]
    slot: int
    max_tokens: int
    on_event: Callable[[tuple[Any, ...]], None]
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: int | None = None  # None: none; k: each token's logprob and the top k
    timeout_s: float = 120.0
    release: Callable[[], None] = lambda: None
    request_id: str = "-"
    adapter: str = "base"
    team: str = ""
    cancelled: threading.Event = field(default_factory=threading.Event)
    generated: list[int] = field(default_factory=list)
    sent: int = 0
    submitted: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    joined_at: float | None = None
    last_token_at: float | None = None
    generator: torch.Generator | None = None
    token_logprobs: list[Sampled] = field(default_factory=list)  # when ``logprobs`` is set

    def cancel(self) -> None:
        """Ask the engine to drop this request at its next step (client went away)."""
        self.cancelled.set()

    def emit(self, text: str, reason: str | None) -> str | None:
        """Send the part of ``text`` (all generated so far) that can no longer change.

        Cuts at a stop string (reason ``stop``); holds back an unfinished UTF-8 character
        and a possible start of a stop string. Returns the finish reason, if any.
        """
        end = len(text)
        for s in self.stop:
            at = text.find(s, max(0, self.sent - len(s)))
            if at != -1 and at < end:
                end, reason = at, "stop"
        if reason is None:
            # hold back an unfinished UTF-8 character and a possible start of a stop string
            while end > self.sent and text[end - 1] == "\ufffd":
                end -= 1
            hold = 0
            for s in self.stop:
                for k in range(min(len(s) - 1, end - self.sent), 0, -1):
                    if text[end - k : end] == s[:k]:
                        hold = max(hold, k)
                        break
            end -= hold
        if end > self.sent and reason not in ("cancelled", "timeout"):
            self.on_event(("delta", text[self.sent : end], len(self.generated)))
            self.sent = end
        return reason
