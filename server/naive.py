"""The naive baseline for ``bench serve``: one request at a time, PEFT ``set_adapter`` per request.

It has the engine's interface (``submit``, ``start``, ``stop``, ``queue_depth``,
``active``) so the same app serves it; only the scheduling differs.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

from server.engine import GenRequest, QueueFullError


class NaiveEngine:
    """Serial generation on a PEFT model holding every adapter; switches with ``set_adapter``."""

    def __init__(self, hub: Any, model: Any, tokenizer: Any, max_queue: int = 10_000) -> None:
        self.hub, self.base, self.tokenizer = hub, model, tokenizer
        self.model = None
        self.names: dict[int, str] = {}
        self.max_queue = max_queue
        self._pending: collections.deque[GenRequest] = collections.deque()
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.active = 0
        self.stop_at_eos = True
        """False: every request makes exactly ``max_tokens`` tokens (benchmarks)."""

    def attach_from(self, cache: Any, names: list[str]) -> None:
        """Load ``names`` through ``cache`` (for slot numbers) and attach each to PEFT by name."""
        for name in names:
            entry = cache.acquire(cache.resolve(name, None))
            payload = cache.store.pull(entry.ref, team=cache.identity, where="bench")
            if self.model is None:
                self.model = self.hub.adapters["lora"].load(self.base, payload, name)
            else:
                self.hub.adapters["lora"].load(self.model, payload, name)
            self.names[entry.slot] = name
        self.model.eval()

    def attach(self, slot: int, payload: Any) -> None:
        """Attach ``payload`` (an :class:`hub.types.AdapterPayload`) under ``slot`` by its name."""
        if self.model is None:
            self.model = self.hub.adapters["lora"].load(self.base, payload, payload.name)
        else:
            self.hub.adapters["lora"].load(self.model, payload, payload.name)
        self.names[slot] = payload.name
        self.model.eval()

    @property
    def queue_depth(self) -> int:
        """Requests waiting."""
        return len(self._pending)

    def start(self) -> NaiveEngine:
        """Start the worker thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the worker thread."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread:
            self._thread.join(timeout=30)

    def submit(self, req: GenRequest) -> None:
        """Queue a request."""
        with self._cond:
            if len(self._pending) >= self.max_queue:
                raise QueueFullError("queue full")
            self._pending.append(req)
            self._cond.notify()

    def _run(self) -> None:
        import torch

        torch.set_grad_enabled(False)
        while True:
            with self._cond:
                while not self._stop and not self._pending:
                    self._cond.wait(1.0)
                if self._stop:
                    return
                req = self._pending.popleft()
            self.active = 1
            try:
                self._one(req)
            finally:
                self.active = 0

    def _one(self, req: GenRequest) -> None:
        import torch

        ids = torch.tensor([req.prompt_ids], device=self.model.device)
        name = self.names.get(req.slot)
        kwargs = {
            "max_new_tokens": req.max_tokens,
            "do_sample": False,
            "eos_token_id": self.tokenizer.eos_token_id,
            "pad_token_id": 0,
        }
        if not self.stop_at_eos:
            kwargs.update(eos_token_id=None, min_new_tokens=req.max_tokens)
        if name is None:
            with self.model.disable_adapter():
                out = self.model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs
                )
        else:
            self.model.set_adapter(name)
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
        new = out[0, ids.shape[1] :].tolist()
        req.first_token_at = req.last_token_at = time.monotonic()
        req.generated = new
        text = self.tokenizer.decode(
            [t for t in new if t != self.tokenizer.eos_token_id], skip_special_tokens=True
        )
        if text:
            req.on_event(("delta", text))
        finish = "stop" if new and new[-1] == self.tokenizer.eos_token_id else "length"
        req.on_event(
            (
                "done",
                finish,
                {
                    "prompt_tokens": len(req.prompt_ids),
                    "completion_tokens": len(new),
                    "total_tokens": len(req.prompt_ids) + len(new),
                },
            )
        )
        req.release()

    def static_mixed_batch(
        self, names: list[str], words: list[str], rows: int, max_tokens: int
    ) -> dict[str, Any]:
        """PEFT's own mixed batch: one ``generate`` with ``adapter_names`` per row (tokens/s)."""
        import torch

        prompts = [words[i % len(words)] + ":" for i in range(rows)]
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        batch = batch.to(self.model.device)
        adapter_names = [names[i % len(names)] for i in range(rows)]
        with torch.no_grad():  # warm-up: the first adapter_names call builds its hooks
            self.model.generate(
                **batch,
                adapter_names=adapter_names,
                max_new_tokens=1,
                do_sample=False,
                pad_token_id=0,
                eos_token_id=None,
            )
        start = time.perf_counter()
        with torch.no_grad():
            out = self.model.generate(
                **batch,
                adapter_names=adapter_names,
                max_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=0,
                eos_token_id=None,
            )
        wall = time.perf_counter() - start
        tokens = (out.shape[1] - batch["input_ids"].shape[1]) * rows
        return {
            "rows": rows,
            "tokens": tokens,
            "wall_s": round(wall, 3),
            "tokens_per_s": round(tokens / wall, 1),
        }
