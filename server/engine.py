"""Continuous-batching generation engine: one worker thread, many adapters per forward pass.

Requests wait in a bounded queue. At every step the worker admits waiting requests up to
``max_batch`` rows as one prefill group, runs the next chunk of at most ``prefill_chunk``
prompt columns of that group, and then decodes one token for every running row in one
forward pass; each row uses its own adapter through :class:`server.lora.LoRABank`. A long
prompt therefore costs the running rows one chunk per step, not a stall. A group whose
prefill finished joins the running batch. Finished, cancelled and timed-out rows leave
after the step that finished them; cancelled ones leave before the next forward pass. One
row's failure (sampling, non-finite logits, decoding, streaming, a prefill that raises)
ends that row only, with an error naming its request id.

Everything lives on the model's device (:func:`server.lora.model_device`): the KV cache
and per-row tensors (:class:`server.kvcache.KVBatch`, grown in place), input ids, the
requests' random generators. Sampling runs there too, and a step reads back one tensor
(tokens, statuses, logprobs): ``stats["syncs"]`` counts those reads, ``stats["steps"]``
the forward passes. Text is decoded incrementally (a few tokens per step, not the whole
completion).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from server.kvcache import KVBatch
from server.lora import LoRABank, model_device
from server.request import GenRequest, QueueFullError
from server.sampling import RowError, sample_rows

__all__ = ["Engine", "GenRequest", "QueueFullError"]

log = logging.getLogger("qlora_hub.server.engine")

PREFILL_CHUNK = 512
"""Prompt columns one prefill forward pass takes at most (the default of ``prefill_chunk``)."""


@dataclass
class _Detok:
    """Incremental detokenization of one completion (vLLM's prefix/read offsets).

    ``ids`` are the completion's tokens without end tokens; ``text`` is what is final.
    Each step decodes only ``ids[prefix:]`` against ``ids[prefix:read]``: the few tokens
    before the new ones keep a tokenizer's leading-space rules the same as decoding the
    whole completion.
    """

    ids: list[int] = field(default_factory=list)
    text: str = ""
    prefix: int = 0
    read: int = 0

    def add(self, tokenizer: Any, token: int | None) -> str:
        """Append ``token`` (None: an end token) and return the whole text so far.

        A trailing unfinished UTF-8 character stays in the returned text as U+FFFD (so
        :meth:`GenRequest.emit` holds it back) but is not made final.
        """
        if token is not None:
            self.ids.append(token)
        before = tokenizer.decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
        now = tokenizer.decode(self.ids[self.prefix :], skip_special_tokens=True)
        if len(now) <= len(before) or now.endswith("\ufffd"):
            return self.text + now[len(before) :]
        self.text += now[len(before) :]
        self.prefix, self.read = self.read, len(self.ids)
        return self.text


@dataclass
class _Prefill:
    """A group of requests being prefilled, chunk by chunk, in its own :class:`KVBatch`."""

    reqs: list[GenRequest]
    batch: KVBatch
    ids: torch.Tensor  # (rows, width) left padded
    mask: torch.Tensor
    pos: torch.Tensor
    done: int = 0  # columns prefilled so far


class Engine:
    """The batching worker. Start with :meth:`start`; submit with :meth:`submit`.

    Args:
        model: causal LM whose linear layers are wrapped by ``bank``; the engine works on
            its device.
        tokenizer: its tokenizer (decodes generated text for stop strings and deltas).
        bank: the gathered-LoRA bank (slot per row).
        max_batch: most rows decoding at once.
        max_queue: most requests waiting; beyond it :meth:`submit` raises :class:`QueueFullError`.
        eos_ids: token ids that end a completion.
        on_step: optional callback ``on_step(batch_rows)`` after every forward pass (metrics).
        on_finish: optional callback ``on_finish(request, reason)`` when a request
            leaves (``stop``, ``length``, ``cancelled``, ``timeout`` or ``error``; metrics).
        prefill_chunk: most prompt columns per prefill forward pass (longer prompts take
            several steps, between which the running rows decode).
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
        prefill_chunk: int = PREFILL_CHUNK,
    ) -> None:
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be positive, got {prefill_chunk}")
        self.model, self.tokenizer, self.bank = model, tokenizer, bank
        self.max_batch, self.max_queue = max_batch, max_queue
        self.eos_ids = eos_ids if eos_ids is not None else {tokenizer.eos_token_id}
        self.on_step = on_step
        self.on_finish = on_finish or (lambda req, reason: None)
        self.pad_id = tokenizer.pad_token_id or 0
        self.prefill_chunk = prefill_chunk
        self.device = model_device(model)
        config = getattr(model.config, "get_text_config", lambda: model.config)()
        self.num_layers = int(config.num_hidden_layers)
        self.stats = {"steps": 0, "syncs": 0}
        """Forward passes, and device-to-host reads in the step loop (one per sampling pass)."""
        self._pending: collections.deque[GenRequest] = collections.deque()
        self._retry: collections.deque[GenRequest] = collections.deque()  # prefill alone
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._reset()

    def _reset(self) -> None:
        self.rows: list[GenRequest] = []
        self.batch = KVBatch(self.device, self.num_layers, rows=self.max_batch)
        self.prefill: _Prefill | None = None
        self._detok: dict[int, _Detok] = {}

    @property
    def queue_depth(self) -> int:
        """Requests waiting to join the batch."""
        return len(self._pending)

    @property
    def active(self) -> int:
        """Requests generating now: rows decoding and requests being prefilled."""
        prefill = self.prefill
        return len(self.rows) + (len(prefill.reqs) if prefill is not None else 0)

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
        group = self.prefill.reqs if self.prefill else []
        for req in [*self.rows, *group, *self._retry, *self._pending]:
            self._finish_error(req, "server shutting down")
        self._pending.clear()
        self._retry.clear()
        self._reset()

    def submit(self, req: GenRequest) -> None:
        """Queue ``req``; raises :class:`QueueFullError` when ``max_queue`` requests wait already."""
        if req.seed is not None and not 0 <= req.seed < 2**63:
            raise ValueError(f"seed {req.seed} is outside 0..2^63-1")
        with self._cond:
            if len(self._pending) >= self.max_queue:
                raise QueueFullError(f"{len(self._pending)} requests are waiting")
            if req.seed is not None or req.temperature > 0:
                # sampling happens on the model's device: so does the request's generator
                seed = req.seed
                if seed is None:
                    seed = int.from_bytes(os.urandom(8), "little") >> 1
                req.generator = torch.Generator(device=self.device).manual_seed(seed)
            self._pending.append(req)
            self._cond.notify()

    # ---- worker ------------------------------------------------------------------------------

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._cond:
                while not self._stop and not self._pending and not self._busy():
                    self._cond.wait(timeout=1.0)
                if self._stop:
                    return
                joining = self._admit()
            self._drop_stopped_rows()
            if joining:
                self._start_prefill(joining)
            if self.prefill is not None:
                self._prefill_step()
            if self.rows:
                try:
                    self._decode()
                except Exception as exc:  # a bug or OOM must not kill the worker
                    self._fail_rows(self.rows, "decode", exc)
                    self.rows = []
                    self.batch = KVBatch(self.device, self.num_layers, rows=self.max_batch)

    def _busy(self) -> bool:
        return bool(self.rows or self.prefill or self._retry)

    def _admit(self) -> list[GenRequest]:
        """The next prefill group, when none is in flight: a retried row alone, else waiting
        requests up to ``max_batch`` rows in all (under the lock)."""
        if self.prefill is not None:
            return []
        if self._retry:
            return [self._retry.popleft()]
        joining: list[GenRequest] = []
        while self._pending and len(self.rows) + len(joining) < self.max_batch:
            joining.append(self._pending.popleft())
            joining[-1].joined_at = time.monotonic()
        return joining

    def _start_prefill(self, joining: list[GenRequest]) -> None:
        """Left-pad the group's prompts into one batch (one host-to-device copy each)."""
        joining = [r for r in joining if not self._dropped(r) and self._valid_prompt(r)]
        if not joining:
            return
        width = max(len(r.prompt_ids) for r in joining)
        ids = [[self.pad_id] * (width - len(r.prompt_ids)) + r.prompt_ids for r in joining]
        mask = [[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in joining]
        pos = [[0] * (width - len(r.prompt_ids)) + list(range(len(r.prompt_ids))) for r in joining]
        dev = self.device
        batch = KVBatch(self.device, self.num_layers, rows=len(joining), cols=width)
        batch.add_rows(len(joining))
        batch.slots[: len(joining)] = torch.tensor(
            [r.slot for r in joining], dtype=torch.long, device=dev
        )
        self.prefill = _Prefill(
            joining,
            batch,
            torch.tensor(ids, dtype=torch.long, device=dev),
            torch.tensor(mask, dtype=torch.long, device=dev),
            torch.tensor(pos, dtype=torch.long, device=dev),
        )

    def _prefill_step(self) -> None:
        """Run the group's next chunk; after the last one, sample and join the running batch.

        When the group fails, each of its rows is prefilled again alone, so only the
        culprit fails; the running rows are untouched either way.
        """
        group = self.prefill
        try:
            self._prefill_chunk(group)
        except Exception as exc:
            self.prefill = None
            if len(group.reqs) == 1:
                self._fail_rows(group.reqs, "prefill", exc)
            else:
                self._retry.extend(group.reqs)

    def _valid_prompt(self, req: GenRequest) -> bool:
        """Fail a request whose prompt holds a token id outside the vocabulary (on a GPU
        the embedding lookup would be a fatal device assert, not an exception)."""
        vocab = self.model.get_input_embeddings().num_embeddings
        bad = next((t for t in req.prompt_ids if not 0 <= t < vocab), None)
        if bad is not None:
            exc = ValueError(f"token id {bad} is outside the vocabulary (0..{vocab - 1})")
            self._fail_rows([req], "prefill", exc)
        return bad is None

    def _prefill_chunk(self, group: _Prefill) -> None:
        batch, n = group.batch, len(group.reqs)
        start, end = group.done, min(group.done + self.prefill_chunk, group.ids.shape[1])
        mask = batch.open_columns(group.mask[:, start:end])
        logits = self._forward(
            group.ids[:, start:end], mask, group.pos[:, start:end], batch.slots[:n], batch
        )
        batch.advance(end - start)
        group.done = end
        if end < group.ids.shape[1]:
            return
        self.prefill = None
        batch.lens = [len(r.prompt_ids) for r in group.reqs]
        batch.pos[:n] = group.pos[:, -1] + 1
        last, tokens, failed = self._sample_rows(group.reqs, logits)
        batch.last[:n] = last
        keep = self._after_tokens(group.reqs, tokens, failed)
        if keep:
            self.batch.join(batch, keep)
            self.rows.extend(group.reqs[i] for i in keep)

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

    def _forward(self, ids, mask, pos, slots, batch: KVBatch) -> torch.Tensor:
        """One forward pass over ``batch``'s cache (written in place); last-position logits."""
        # the bank lock covers only the forward pass: finishing a row releases its adapter in
        # the cache, which takes the cache lock, and the cache takes the bank lock inside it
        with self.bank.lock:
            self.bank.rows = slots
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=pos,
                past_key_values=batch.cache(),
                use_cache=True,
                logits_to_keep=1,
            )
        self.stats["steps"] += 1
        if self.on_step:
            self.on_step(ids.shape[0])
        return out.logits[:, -1, :].float()

    def _decode(self) -> None:
        batch, n = self.batch, len(self.rows)
        mask = batch.open_columns(torch.ones(n, 1, dtype=torch.long, device=self.device))
        logits = self._forward(
            batch.last[:n, None], mask, batch.pos[:n, None], batch.slots[:n], batch
        )
        batch.advance(1)
        batch.pos[:n] += 1
        last, tokens, failed = self._sample_rows(self.rows, logits)
        batch.last[:n] = last
        keep = self._after_tokens(self.rows, tokens, failed)
        if len(keep) < n:
            self._keep(keep)

    def _sample_rows(
        self, reqs: list[GenRequest], logits: torch.Tensor
    ) -> tuple[torch.Tensor, list[int], dict[int, str]]:
        """Every row's next token, sampled on the device with one read back to the host.

        Returns the tokens as a device tensor (the next input ids) and as ints, and
        ``{row: reason}`` for rows that cannot go on (non-finite logits or probabilities,
        see :mod:`server.sampling`); their token is meaningless and they leave the batch.
        """
        last, results = sample_rows(logits, reqs, self.stats)
        tokens = [0] * len(reqs)
        failed: dict[int, str] = {}
        for i, (req, got) in enumerate(zip(reqs, results, strict=True)):
            if isinstance(got, RowError):
                failed[i] = got.message
                continue
            tokens[i] = got.token
            if req.logprobs is not None:
                req.token_logprobs.append(got)
        return last, tokens, failed

    def _after_tokens(
        self, reqs: list[GenRequest], tokens: list[int], failed: dict[int, str] | None = None
    ) -> list[int]:
        """Record each row's new token and stream its text; returns the rows still running.

        A row listed in ``failed``, or whose decoding or streaming raises, ends with an
        error; the other rows go on untouched.
        """
        keep = []
        now = time.monotonic()
        failed = failed or {}
        for i, (req, token) in enumerate(zip(reqs, tokens, strict=True)):
            if i in failed:
                self._row_error(req, failed[i])
                continue
            try:
                if req.first_token_at is None:
                    req.first_token_at = now
                req.last_token_at = now
                req.generated.append(token)
                reason = self._stop_reason(req, token)
                text = self._text(req, token)
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

    def _text(self, req: GenRequest, token: int) -> str:
        """The completion's text so far, decoding only the newest tokens."""
        detok = self._detok.setdefault(id(req), _Detok())
        return detok.add(self.tokenizer, None if token in self.eos_ids else token)

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
        order = self.batch.keep(keep)
        self.rows = [self.rows[i] for i in order]

    def _finish(self, req: GenRequest, reason: str) -> None:
        usage = {
            "prompt_tokens": len(req.prompt_ids),
            "completion_tokens": len(req.generated),
            "total_tokens": len(req.prompt_ids) + len(req.generated),
        }
        event = ("error", "timeout", usage) if reason == "timeout" else ("done", reason, usage)
        self._deliver(req, event)
        self._detok.pop(id(req), None)
        req.release()
        self.on_finish(req, reason)

    def _finish_error(self, req: GenRequest, message: str) -> None:
        self._deliver(req, ("error", message, None))
        self._detok.pop(id(req), None)
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
