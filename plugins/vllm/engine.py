"""The ``vllm`` engine: vLLM's async engine (``AsyncLLM``) behind the hub's Engine protocol.

vLLM runs on its own asyncio loop in one thread of the server process (its engine
core runs in child processes it spawns). The server's threads talk to it through
:meth:`VLLMEngine.submit` (a request becomes a task on that loop) and the adapter calls
(which wait for the loop). Each request streams through ``GenRequest.emit``
(:mod:`plugins.vllm.translate` turns it into vLLM's sampling parameters and vLLM's
deltas back into tokens, logprobs and text), so stop strings, held-back partial
characters, usage and finish reasons are exactly the built-in engine's. A watcher ends
cancelled and timed-out requests (vLLM aborts them).

Adapters come as decrypted tensors; :mod:`plugins.vllm.adapter_files` passes them to
vLLM through a private RAM-backed directory that is removed as soon as vLLM loaded
them. Every version gets a new LoRA id, so a hot-swap never mixes two versions.

A request's last event, its ``release()`` and its counting out run on a finisher
thread, never on vLLM's loop: releasing a request may take the server's adapter cache
lock and evict an adapter (``remove_adapter``, which waits for the loop), while a
thread holding that lock may be waiting for the loop to load one (``add_adapter``).

On a CPU, base requests run through an all-zero LoRA (:func:`~plugins.vllm.adapter_files.zero_lora`,
``Limits.zero_base``): vLLM's CPU LoRA ops give a row without a LoRA the last LoRA
slot's weights, another team's adapter, whenever base and adapter rows share a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from hub.engines import AdapterRefused, GenRequest, QueueFullError
from plugins.vllm.adapter_files import check_adapter, ram_copy, zero_lora
from plugins.vllm.translate import record_delta, sampling_params, worker_message

log = logging.getLogger("qlora_hub.vllm")

WATCH_S = 0.05  # how often cancelled and timed-out requests are looked for
CALL_S = 300.0  # the longest an adapter call waits for vLLM


@dataclass
class Limits:
    """What the engine enforces itself (from the ``[vllm]`` and ``[serve]`` settings)."""

    max_queue: int
    max_lora_rank: int
    max_cpu_loras: int
    ram_dir: str
    zero_base: bool = False  # base requests through an all-zero LoRA (vLLM's CPU build)


class VLLMEngine:
    """A started ``AsyncLLM`` serving one base; built by :func:`plugins.vllm.loading.build_engine`.

    Args:
        make_llm: called on the engine's loop to build the ``AsyncLLM``.
        tokenizer: the base's Hugging Face tokenizer.
        eos_ids: tokens that end a completion.
        context: the longest prompt + completion.
        base_fingerprint: the served base's fingerprint.
        info: what ``/v1/models`` shows.
        limits: queue and adapter limits.
    """

    name = "vllm"

    def __init__(
        self,
        make_llm: Callable[[], Any],
        tokenizer: Any,
        *,
        eos_ids: set[int],
        context: int,
        base_fingerprint: str,
        info: dict[str, Any],
        limits: Limits,
        shapes: dict[str, tuple[int, int]] | None = None,
    ) -> None:
        self.tokenizer, self.eos_ids, self.context = tokenizer, eos_ids, context
        self.base_fingerprint, self.info, self.limits = base_fingerprint, info, limits
        self.max_queue = limits.max_queue
        self.on_step: Callable[[int], None] | None = None
        self.on_finish: Callable[[GenRequest, str], None] = lambda req, reason: None
        self._shapes = shapes
        self._loras: dict[int, Any] = {}  # handle -> LoRARequest
        self._base_lora: Any = None  # what base requests run through (None: no LoRA)
        self._handles = itertools.count(1)
        self._ids = itertools.count(1)
        self._live: dict[int, tuple[GenRequest, asyncio.Task]] = {}
        self._ends: dict[int, str] = {}  # request number -> why the engine ended it early
        self._waiting = 0
        self._running = 0
        self._lock = threading.Lock()
        self._stopped = False
        # last events and releases, in order, off the loop (see the module docstring)
        self._finisher = ThreadPoolExecutor(1, thread_name_prefix="qlora-hub-vllm-finish")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="qlora-hub-vllm", daemon=True
        )
        self._thread.start()
        try:
            self.llm = self._call(self._build(make_llm), timeout=None)
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise
        self._watcher = asyncio.run_coroutine_threadsafe(self._watch(), self._loop)
        if limits.zero_base:
            try:
                self._base_lora = self._load("qlora-hub-zero-base", *zero_lora(shapes or {}))
            except BaseException:
                self.stop()
                raise

    async def _build(self, make_llm: Callable[[], Any]) -> Any:
        return make_llm()

    def _call(self, coro: Any, timeout: float | None = CALL_S) -> Any:
        """Run ``coro`` on the engine's loop and wait for its result (from another thread)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("an adapter call on vLLM's own loop would wait for itself")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # ---- state the server reads --------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Requests submitted that have no token yet."""
        return self._waiting

    @property
    def active(self) -> int:
        """Requests generating now."""
        return self._running

    @property
    def alive(self) -> bool:
        """The loop runs and vLLM's engine core has not died."""
        return (
            not self._stopped
            and self._thread.is_alive()
            and not getattr(self.llm, "errored", False)
        )

    def start(self) -> VLLMEngine:
        """vLLM started when the engine was built: nothing left to do (idempotent)."""
        return self

    def stop(self) -> None:
        """End every request with an error, then shut vLLM down (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self._call(self._end_all("server shutting down"), timeout=60)
        except Exception:  # shutting down anyway
            log.warning("vllm: requests did not end cleanly at shutdown", exc_info=True)
        self._watcher.cancel()
        try:  # before the engine core goes: else its output handler may see it die and log a traceback
            self._call(self._stop_output_handler(), timeout=30)
        except Exception:
            log.warning("vllm: the output handler did not stop cleanly", exc_info=True)
        try:
            self.llm.shutdown()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._finisher.shutdown(wait=False)

    async def _stop_output_handler(self) -> None:
        """Cancel AsyncLLM's output handler task (its public ``output_handler``) and wait for it."""
        task = getattr(self.llm, "output_handler", None)
        if task is None or task.done():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    # ---- adapters ------------------------------------------------------------------------------

    def adapter_shapes(self) -> dict[str, tuple[int, int]] | None:
        """``module -> (in, out)`` of the base's 2-D weights (from its safetensors headers)."""
        return self._shapes

    def add_adapter(self, key: str, config: dict[str, Any], tensors: dict[str, Any]) -> int:
        """Load an adapter version into vLLM under a new LoRA id; returns that id.

        Raises:
            AdapterRefused: vLLM cannot serve it (rank, DoRA, target modules, no room).
        """
        check_adapter(config, self.limits.max_lora_rank)
        resident = len(self._loras) + (self._base_lora is not None)
        if resident >= self.limits.max_cpu_loras:
            raise AdapterRefused(
                f"{resident} adapters are resident in vLLM, its maximum "
                "([vllm] max_cpu_loras): raise it, or lower serve.max_resident to at most it"
            )
        request = self._load(key, config, tensors)
        self._loras[request.lora_int_id] = request
        return request.lora_int_id

    def _load(self, key: str, config: dict[str, Any], tensors: dict[str, Any]) -> Any:
        """Pass an adapter to vLLM through a RAM copy under a new LoRA id; its ``LoRARequest``."""
        from vllm.lora.request import LoRARequest

        handle = next(self._handles)
        with ram_copy(self.limits.ram_dir, config, tensors) as path:
            request = LoRARequest(key, handle, str(path))
            try:
                loaded = self._call(self.llm.add_lora(request))
            except Exception as exc:
                raise AdapterRefused(f"vLLM cannot load it: {worker_message(exc)}") from None
        if not loaded:
            raise AdapterRefused("vLLM did not load it (see the vLLM log)")
        return request

    def remove_adapter(self, handle: int) -> None:
        """Forget ``handle`` in vLLM (the server calls it once no request uses it)."""
        if self._loras.pop(handle, None) is None or self._stopped:
            return
        try:
            self._call(self.llm.remove_lora(handle))
        except Exception:  # it stays in vLLM's LRU cache; the id is never used again
            log.warning("vllm: removing LoRA %d failed", handle, exc_info=True)

    # ---- requests ------------------------------------------------------------------------------

    def submit(self, req: GenRequest) -> None:
        """Queue ``req``; raises :class:`QueueFullError` or ``ValueError`` (bad seed, adapter)."""
        if req.seed is not None and not 0 <= req.seed < 2**63:
            raise ValueError(f"seed {req.seed} is outside 0..2^63-1")
        if req.slot and req.slot not in self._loras:
            raise ValueError(f"adapter handle {req.slot} is not loaded")
        if self._stopped:
            raise QueueFullError("the engine is shutting down")
        with self._lock:
            if self._waiting >= self.max_queue:
                raise QueueFullError(f"{self._waiting} requests are waiting")
            self._waiting += 1
        lora = self._loras[req.slot] if req.slot else self._base_lora
        self._loop.call_soon_threadsafe(self._begin, req, lora)

    def _begin(self, req: GenRequest, lora: Any) -> None:
        number = next(self._ids)
        task = self._loop.create_task(self._serve(req, lora, number))
        self._live[number] = (req, task)
        task.add_done_callback(lambda _: self._unstarted(number))

    def _unstarted(self, number: int) -> None:
        """Finish a request whose task was cancelled before it ran (its ``finally`` never did)."""
        if number in self._live:
            req, _ = self._live.pop(number)
            self._finish(req, self._ends.pop(number, "cancelled"))
            self._leave(req, False)

    async def _serve(self, req: GenRequest, lora: Any, number: int) -> None:
        """Stream one request from vLLM through ``req.emit``; finish it exactly once."""
        from vllm.inputs import TokensPrompt

        started, reason, request_id = False, None, f"{req.request_id}-{number}"
        try:
            stream = self.llm.generate(
                TokensPrompt(prompt_token_ids=list(req.prompt_ids)),
                sampling_params(req, self.eos_ids),
                request_id,
                lora_request=lora,
            )
            async for out in stream:
                if not started:
                    started = True
                    self._to_running(req)
                reason = record_delta(req, out.outputs[0], self.eos_ids, self.tokenizer)
                if reason:
                    break
            if reason is None:  # the stream ended without a reason: vLLM aborted it
                raise RuntimeError("vLLM ended the request without finishing it")
            if not out.finished:
                await self.llm.abort(request_id)
            self._finish(req, reason)
        except asyncio.CancelledError:
            self._finish(req, self._ends.get(number, "cancelled"))
        except Exception as exc:
            log.error("vllm request %s failed: %s: %s", req.request_id, type(exc).__name__, exc)
            self._finish_error(
                req, f"generation failed: {type(exc).__name__}; request {req.request_id}"
            )
        finally:
            self._live.pop(number, None)
            self._ends.pop(number, None)
            self._leave(req, started)

    # ---- bookkeeping -----------------------------------------------------------------------------

    def _to_running(self, req: GenRequest) -> None:
        req.joined_at = time.monotonic()
        with self._lock:
            self._waiting -= 1
            self._running += 1

    def _leave(self, req: GenRequest, started: bool) -> None:
        """Count ``req`` out once its last event and release are done (the finisher's order)."""
        self._off_loop(self._count_out, started)

    def _count_out(self, started: bool) -> None:
        with self._lock:
            if started:
                self._running -= 1
            else:
                self._waiting -= 1

    async def _watch(self) -> None:
        """End cancelled and timed-out requests (their tasks' cancellation aborts them in vLLM)."""
        while True:
            await asyncio.sleep(WATCH_S)
            now = time.monotonic()
            for number, (req, task) in list(self._live.items()):
                if task.done() or number in self._ends:
                    continue
                if req.cancelled.is_set():
                    self._ends[number] = "cancelled"
                elif now - req.submitted > req.timeout_s:
                    self._ends[number] = "timeout"
                else:
                    continue
                task.cancel()

    async def _end_all(self, message: str) -> None:
        tasks = []
        for number, (_, task) in list(self._live.items()):
            self._ends[number] = "error:" + message
            task.cancel()
            tasks.append(task)
        if tasks:  # let each one deliver its error before vLLM goes away
            await asyncio.wait(tasks, timeout=30)

    def _finish(self, req: GenRequest, reason: str) -> None:
        if reason.startswith("error:"):
            self._finish_error(req, reason.removeprefix("error:"))
            return
        prompt, done = len(req.prompt_ids), len(req.generated)
        usage = {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}
        event = ("error", "timeout", usage) if reason == "timeout" else ("done", reason, usage)
        self._deliver(req, event, reason)

    def _finish_error(self, req: GenRequest, message: str) -> None:
        self._deliver(req, ("error", message, None), "error")

    def _deliver(self, req: GenRequest, event: tuple[Any, ...], reason: str) -> None:
        """Send a request its last event, release it and count it, on the finisher thread."""
        self._off_loop(self._hand_over, req, event, reason)

    def _off_loop(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the finisher thread (in order); here once it is shut down."""
        try:
            self._finisher.submit(fn, *args)
        except RuntimeError:  # stop() shut the finisher down: nothing can wait on the loop now
            fn(*args)

    def _hand_over(self, req: GenRequest, event: tuple[Any, ...], reason: str) -> None:
        """The last event, ``release()`` and ``on_finish``; a receiver that is gone must not
        stop the engine."""
        try:
            req.on_event(event)
        except Exception:
            log.warning("vllm: request %s: its last event was lost", req.request_id)
        try:
            req.release()
        finally:
            self.on_finish(req, reason)
