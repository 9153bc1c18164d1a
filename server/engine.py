"""Continuous-batching generation engine: one worker thread, many adapters per forward pass.

Requests wait in a bounded queue. At every step the worker admits waiting
requests up to ``max_batch`` rows, prefills them together (left padded), and
merges their KV cache into the running batch, which then decodes one token
for every row in one forward pass; each row uses its own adapter through
:class:`server.lora.LoRABank`. Finished, cancelled and timed-out rows leave
after the step that finished them; cancelled ones leave before the next forward
pass. One row's failure (sampling, non-finite logits, decoding, streaming, a prefill
that raises) ends that row only, with an error naming its request id. The KV cache
is held as one left-padded tensor pair per layer, so joining is a pad + concat and
leaving an index.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from server.lora import LoRABank
from server.request import GenRequest, QueueFullError
from server.sampling import RowError, sample

__all__ = ["Engine", "GenRequest", "QueueFullError"]

log = logging.getLogger("qlora_hub.server.engine")


class Engine:
    """The batching worker. Start with :meth:`start`; submit with :meth:`submit`.

    Args:
        model: causal LM whose linear layers are wrapped by ``bank``.
        tokenizer: its tokenizer (decodes generated text for stop strings and deltas).
        bank: the gathered-LoRA bank (slot per row).
        max_batch: most rows decoding at once.
        max_queue: most requests waiting; beyond it :meth:`submit` raises :class:`QueueFullError`.
        eos_ids: token ids that end a completion.
        on_step: optional callback ``on_step(batch_rows)`` after every forward pass (metrics).
        on_finish: optional callback ``on_finish(request, reason)`` when a request
            leaves (``stop``, ``length``, ``cancelled``, ``timeout`` or ``error``; metrics).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        bank: LoRABank,
        *,
        max_batch: int = 32,
        max_queue: int = 256,
        eos_ids: set[int] | None = None,
        on_step: Callable[[int], None] | None = None,
        on_finish: Callable[[GenRequest, str], None] | None = None,
    ) -> None:
        self.model, self.tokenizer, self.bank = model, tokenizer, bank
        self.max_batch, self.max_queue = max_batch, max_queue
        self.eos_ids = eos_ids if eos_ids is not None else {tokenizer.eos_token_id}
        self.on_step = on_step
        self.on_finish = on_finish or (lambda req, reason: None)
        self.pad_id = tokenizer.pad_token_id or 0
        self._pending: collections.deque[GenRequest] = collections.deque()
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._reset()

    def _reset(self) -> None:
        self.rows: list[GenRequest] = []
        self.kv: list[list[torch.Tensor]] = []  # per layer [keys, values], (B, H, T, D)
        self.mask = torch.zeros(0, 0, dtype=torch.long)
        self.pos = torch.zeros(0, dtype=torch.long)
        self.slots = torch.zeros(0, dtype=torch.long)
        self.last = torch.zeros(0, dtype=torch.long)

    @property
    def queue_depth(self) -> int:
        """Requests waiting to join the batch."""
        return len(self._pending)

    @property
    def active(self) -> int:
        """Rows currently decoding."""
        return len(self.rows)

    def start(self) -> Engine:
        """Start the worker thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="qlora-hub-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the worker; waiting and running requests get an error event."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for req in [*self.rows, *self._pending]:
            self._finish_error(req, "server shutting down")
        self._pending.clear()
        self._reset()

    def submit(self, req: GenRequest) -> None:
        """Queue ``req``; raises :class:`QueueFullError` when ``max_queue`` requests wait already."""
        if req.seed is not None and not 0 <= req.seed < 2**63:
            raise ValueError(f"seed {req.seed} is outside 0..2^63-1")
        with self._cond:
            if len(self._pending) >= self.max_queue:
                raise QueueFullError(f"{len(self._pending)} requests are waiting")
            if req.seed is not None:
                req.generator = torch.Generator().manual_seed(req.seed)
            elif req.temperature > 0:
                req.generator = torch.Generator().manual_seed(
                    int.from_bytes(os.urandom(8), "little")
                )
            self._pending.append(req)
            self._cond.notify()

    # ---- worker ------------------------------------------------------------------------------

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._cond:
                while not self._stop and not self._pending and not self.rows:
                    self._cond.wait(timeout=1.0)
                if self._stop:
                    return
                joining = []
                while self._pending and len(self.rows) + len(joining) < self.max_batch:
                    joining.append(self._pending.popleft())
                    joining[-1].joined_at = time.monotonic()
            joining = [r for r in joining if not self._dropped(r)]
            self._drop_stopped_rows()
            if joining:
                self._prefill_isolated(joining)
            if self.rows:
                try:
                    self._decode()
                except Exception as exc:  # a bug or OOM must not kill the worker
                    self._fail_rows(self.rows, "decode", exc)
                    self._reset()

    def _prefill_isolated(self, joining: list[GenRequest]) -> None:
        """Prefill ``joining``; when that fails, retry each row alone so only the culprit fails.

        The running rows are untouched either way: a prefill builds its own cache and joins
        the batch only once it succeeded.
        """
        try:
            self._prefill(joining)
            return
        except Exception as exc:
            if len(joining) == 1:
                self._fail_rows(joining, "prefill", exc)
                return
        for req in joining:
            try:
                self._prefill([req])
            except Exception as exc:
                self._fail_rows([req], "prefill", exc)

    def _fail_rows(self, reqs: list[GenRequest], phase: str, exc: Exception) -> None:
        """End ``reqs`` with an error naming the failure; log it once per request id."""
        for req in reqs:
            log.error(
                "engine %s failed for request %s (adapter %s): %s: %s",
                phase,
                req.request_id,
                req.adapter,
                type(exc).__name__,
                exc,
                exc_info=exc,
                extra={"request_id": req.request_id, "adapter": req.adapter},
            )
            self._finish_error(
                req, f"generation failed ({phase}): {type(exc).__name__}; request {req.request_id}"
            )

    def _drop_stopped_rows(self) -> None:
        """Before a forward pass, finish running rows that were cancelled or timed out.

        A cancelled request therefore costs no further forward pass once the engine sees it.
        """
        if not self.rows:
            return
        keep = [i for i, req in enumerate(self.rows) if not self._dropped(req)]
        if len(keep) < len(self.rows):
            self._keep(keep)

    def _dropped(self, req: GenRequest) -> bool:
        """Finish a request that was cancelled or timed out while waiting; True if so."""
        reason = self._stop_reason(req)
        if reason:
            self._finish(req, reason)
        return bool(reason)

    def _forward(self, ids, mask, pos, slots, kv) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=[(k, v) for k, v in kv]) if kv else DynamicCache()
        # the bank lock covers only the forward pass: finishing a row releases its adapter in
        # the cache, which takes the cache lock, and the cache takes the bank lock inside it
        with self.bank.lock:
            self.bank.rows = slots
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=pos,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        layers = out.past_key_values.layers
        if self.on_step:
            self.on_step(ids.shape[0])
        return out.logits[:, -1, :].float(), [[layer.keys, layer.values] for layer in layers]

    def _prefill(self, joining: list[GenRequest]) -> None:
        if not joining:
            return
        width = max(len(r.prompt_ids) for r in joining)
        ids = torch.full((len(joining), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(joining), width), dtype=torch.long)
        for i, r in enumerate(joining):
            ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        slots = torch.tensor([r.slot for r in joining], dtype=torch.long)
        logits, kv = self._forward(ids, mask, pos, slots, None)
        last, failed = self._sample_rows(joining, logits)
        keep = self._after_tokens(joining, last, failed)
        if keep:
            idx = torch.tensor(keep, dtype=torch.long)
            kv = [[t[idx] for t in layer] for layer in kv]
            joining = [joining[i] for i in keep]
            self._merge(joining, kv, mask[idx], pos[idx, -1] + 1, slots[idx], last[idx])

    def _merge(self, joining, kv, mask, pos, slots, last) -> None:
        """Add prefilled rows to the running batch, left-padding whichever cache is shorter."""
        if not self.rows:
            self.rows, self.kv, self.mask, self.pos, self.slots, self.last = (
                list(joining),
                kv,
                mask,
                pos,
                slots,
                last,
            )
            return
        width = max(self.mask.shape[1], mask.shape[1])

        def pad(t: torch.Tensor, dim: int) -> torch.Tensor:
            missing = width - t.shape[dim]
            if missing == 0:
                return t
            shape = list(t.shape)
            shape[dim] = missing
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        self.kv = [
            [torch.cat([pad(old, 2), pad(new, 2)]) for old, new in zip(old_l, new_l, strict=True)]
            for old_l, new_l in zip(self.kv, kv, strict=True)
        ]
        self.mask = torch.cat([pad(self.mask, 1), pad(mask, 1)])
        self.pos = torch.cat([self.pos, pos])
        self.slots = torch.cat([self.slots, slots])
        self.last = torch.cat([self.last, last])
        self.rows.extend(joining)

    def _decode(self) -> None:
        mask = torch.cat([self.mask, torch.ones(len(self.rows), 1, dtype=torch.long)], dim=1)
        logits, self.kv = self._forward(
            self.last[:, None], mask, self.pos[:, None], self.slots, self.kv
        )
        self.mask, self.pos = mask, self.pos + 1
        self.last, failed = self._sample_rows(self.rows, logits)
        keep = self._after_tokens(self.rows, self.last, failed)
        if len(keep) < len(self.rows):
            self._keep(keep)

    def _sample_rows(
        self, reqs: list[GenRequest], logits: torch.Tensor
    ) -> tuple[torch.Tensor, dict[int, str]]:
        """The next token of every row, sampled row by row so one row's failure stays its own.

        Returns the tokens and ``{row: reason}`` for rows that cannot go on (non-finite
        logits or probabilities, see :mod:`server.sampling`); their token is meaningless and
        they leave the batch.
        """
        tokens = [0] * len(reqs)
        failed: dict[int, str] = {}
        for i, (req, got) in enumerate(zip(reqs, sample(logits, reqs), strict=True)):
            if isinstance(got, RowError):
                failed[i] = got.message
                continue
            tokens[i] = got.token
            if req.logprobs is not None:
                req.token_logprobs.append(got)
        # the next step feeds these back as input ids: keep them on the model's device
        return torch.tensor(tokens, dtype=torch.long, device=logits.device), failed

    def _after_tokens(
        self, reqs: list[GenRequest], tokens: torch.Tensor, failed: dict[int, str] | None = None
    ) -> list[int]:
        """Record each row's new token and stream its text; returns the rows still running.

        A row listed in ``failed``, or whose decoding or streaming raises, ends with an
        error; the other rows go on untouched.
        """
        keep = []
        now = time.monotonic()
        failed = failed or {}
        for i, (req, token) in enumerate(zip(reqs, tokens.tolist(), strict=True)):
            if i in failed:
                self._row_error(req, failed[i])
                continue
            try:
                if req.first_token_at is None:
                    req.first_token_at = now
                req.last_token_at = now
                req.generated.append(token)
                reason = self._stop_reason(req, token)
                text = self._text(req)
                reason = req.emit(text, reason)
            except Exception as exc:
                self._row_error(req, f"decoding failed: {type(exc).__name__}: {exc}")
                continue
            if reason:
                self._finish(req, reason)
            else:
                keep.append(i)
        return keep

    def _row_error(self, req: GenRequest, reason: str) -> None:
        """End one row with an error; the batch goes on without it."""
        log.warning(
            "request %s (adapter %s) ended with an error: %s",
            req.request_id,
            req.adapter,
            reason,
            extra={"request_id": req.request_id, "adapter": req.adapter},
        )
        self._finish_error(req, f"{reason}; request {req.request_id}")

    def _text(self, req: GenRequest) -> str:
        ids = [t for t in req.generated if t not in self.eos_ids]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _stop_reason(self, req: GenRequest, token: int | None = None) -> str | None:
        if req.cancelled.is_set():
            return "cancelled"
        if time.monotonic() - req.submitted > req.timeout_s:
            return "timeout"
        if token is not None and token in self.eos_ids:
            return "stop"
        if len(req.generated) >= req.max_tokens:
            return "length"
        return None

    def _keep(self, keep: list[int]) -> None:
        idx = torch.tensor(keep, dtype=torch.long)
        self.rows = [self.rows[i] for i in keep]
        self.mask, self.pos = self.mask[idx], self.pos[idx]
        self.slots, self.last = self.slots[idx], self.last[idx]
        # columns that are padding for every remaining row carry nothing: drop them
        used = self.mask.any(0).nonzero()
        start = int(used[0]) if len(keep) and len(used) else 0
        self.mask = self.mask[:, start:]
        self.kv = [[t[idx][:, :, start:] for t in layer] for layer in self.kv]
        if not keep:
            self._reset()

    def _finish(self, req: GenRequest, reason: str) -> None:
        usage = {
            "prompt_tokens": len(req.prompt_ids),
            "completion_tokens": len(req.generated),
            "total_tokens": len(req.prompt_ids) + len(req.generated),
        }
        event = ("error", "timeout", usage) if reason == "timeout" else ("done", reason, usage)
        self._deliver(req, event)
        req.release()
        self.on_finish(req, reason)

    def _finish_error(self, req: GenRequest, message: str) -> None:
        self._deliver(req, ("error", message, None))
        req.release()
        self.on_finish(req, "error")

    def _deliver(self, req: GenRequest, event: tuple[Any, ...]) -> None:
        """Send a request its last event; a receiver that is gone must not stop the engine."""
        try:
            req.on_event(event)
        except Exception:
            log.warning(
                "request %s: its %s event could not be delivered",
                req.request_id,
                event[0],
                exc_info=True,
                extra={"request_id": req.request_id, "adapter": req.adapter},
            )
