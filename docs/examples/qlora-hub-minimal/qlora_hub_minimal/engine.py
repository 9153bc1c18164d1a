"""An engine: a transformers model behind `qlora-hub serve`, one request at a time.

The built-in ``hf`` engine decodes many rows, each with its own adapter, in one
forward pass. This one runs each request alone, adds its adapter's LoRA delta
with forward hooks and recomputes the whole sequence for every token: slow,
but complete (it passes ``hub.testing.EngineContract``). It honours
temperature, seed and logit_bias; it serves Hugging Face directories.
"""

from __future__ import annotations

import collections
import threading
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hub.base import fingerprint
from hub.engines import AdapterRefused, QueueFullError

MAX_RANK = 64


class TinyEngine:
    name = "tiny"

    def __init__(self, base: Path, *, max_queue: int = 8) -> None:
        self.model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(base))
        self.eos_ids = {self.tokenizer.eos_token_id}
        self.max_queue = max_queue
        self.context = self.model.config.max_position_embeddings
        self.base_fingerprint = fingerprint(base)
        self.info = {"engine": self.name, "format": "fp32", "device": "cpu", "dtype": "float32"}
        self.on_step, self.on_finish = None, lambda req, reason: None
        self._shapes, self._adapters, self._next = {}, {}, 1
        self._delta: dict = {}  # the running request's adapter: module -> (A, B, scale)
        self._queue: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._running, self._stopping, self._thread = None, False, None
        for name, module in self.model.named_modules():
            if isinstance(module, torch.nn.Linear):
                self._shapes[name] = (module.in_features, module.out_features)
                module.register_forward_hook(self._lora_hook(name))

    def _lora_hook(self, name):
        def hook(module, args, out):
            if name not in self._delta:
                return out
            a, b, scale = self._delta[name]
            return out + scale * (args[0] @ a.T) @ b.T

        return hook

    queue_depth = property(lambda self: len(self._queue))
    active = property(lambda self: int(self._running is not None))
    alive = property(lambda self: self._thread is not None and self._thread.is_alive())

    def adapter_shapes(self):
        return self._shapes  # the server checks every adapter's tensor shapes against these

    def add_adapter(self, key, config, tensors):
        if config["r"] > MAX_RANK:
            raise AdapterRefused(f"rank {config['r']} is above this engine's maximum {MAX_RANK}")
        pairs: dict = {}
        for tensor_name, tensor in tensors.items():
            module, _, kind = tensor_name.removeprefix("base_model.model.").rpartition(".lora_")
            pairs.setdefault(module, {})[kind[0]] = tensor.float()
        scale = config["lora_alpha"] / config["r"]
        handle, self._next = self._next, self._next + 1
        self._adapters[handle] = {m: (ab["A"], ab["B"], scale) for m, ab in pairs.items()}
        return handle

    def remove_adapter(self, handle):
        self._adapters.pop(handle, None)

    def submit(self, req):
        with self._cond:
            if len(self._queue) >= self.max_queue:
                raise QueueFullError(f"{len(self._queue)} requests are waiting")
            self._queue.append(req)
            self._cond.notify()

    def start(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, daemon=True)
            self._thread.start()
        return self

    def stop(self):
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)
        while self._queue:
            self._end(self._queue.popleft(), ("error", "server shutting down", None), "error")

    def _work(self):
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                self._running = req = self._queue.popleft()
            req.joined_at = time.monotonic()
            try:
                self._generate(req)
            except Exception as exc:  # one request fails, the engine goes on
                self._end(req, ("error", f"generation failed: {exc}", None), "error")
            self._running = None

    def _generate(self, req):
        self._delta = self._adapters[req.slot] if req.slot else {}
        gen = torch.Generator().manual_seed(req.seed if req.seed is not None else time.time_ns())
        reason = None
        while reason is None:
            if req.cancelled.is_set() or self._stopping:
                reason = "cancelled"
                break
            if time.monotonic() - req.submitted > req.timeout_s:
                return self._end(req, ("error", "timeout", None), "timeout")
            with torch.no_grad():
                ids = torch.tensor([req.prompt_ids + req.generated])
                logits = self.model(input_ids=ids).logits[0, -1]
            for token, bias in req.logit_bias.items():
                logits[int(token)] += bias
            if req.temperature > 0:
                probs = torch.softmax(logits / req.temperature, -1)
                token = int(torch.multinomial(probs, 1, generator=gen))
            else:
                token = int(logits.argmax())
            req.generated.append(token)
            req.first_token_at = req.first_token_at or time.monotonic()
            req.last_token_at = time.monotonic()
            if token in self.eos_ids:
                reason = "stop"
            elif len(req.generated) >= req.max_tokens:
                reason = "length"
            kept = [t for t in req.generated if t not in self.eos_ids]
            reason = req.emit(self.tokenizer.decode(kept, skip_special_tokens=True), reason)
            if self.on_step:
                self.on_step(1)
        n, m = len(req.prompt_ids), len(req.generated)
        usage = {"prompt_tokens": n, "completion_tokens": m, "total_tokens": n + m}
        self._end(req, ("done", reason, usage), reason)

    def _end(self, req, event, reason):
        req.on_event(event)
        req.release()
        self.on_finish(req, reason)
