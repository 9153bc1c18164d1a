"""The serving sections of ``qlora-hub bench gpu``, each run in its own process.

``python -m server.bench_gpu SECTION BASE DEVICE SETTINGS_JSON OUT_JSON``; SECTION is one of

- ``serve``: the batching engine driven directly (no HTTP, no Litestar): ``clients``
  closed-loop clients, every request exactly ``max_tokens`` tokens (no end token), on one
  adapter (``single1``), spread over 8 (``mixed8``) and over 32 adapters (``mixed32``);
  scenarios interleaved ``repeats`` times, each keeps its median run;
- ``decode`` (:mod:`server.bench_decode`): one request alone (batch 1) on the engine,
  against plain transformers + bitsandbytes ``generate`` on the same base, and against the
  memory-bandwidth bound of the 4-bit weights (bytes read per token / a device-to-device
  copy's bandwidth measured in the same process);
- ``naive``: PEFT's own mixed batch (``generate(adapter_names=...)``) and a naive server
  (:class:`server.naive.NaiveEngine`: one request at a time, ``set_adapter``), 8 adapters.

Adapters are seeded random LoRAs built from the layer shapes alone
(:func:`server.random_adapter.random_lora_for_shapes`). The result file is rewritten
after every measurement, so a section killed at its time limit keeps what it finished.
Progress goes to stderr.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

WORDS = ["apple", "river", "stone", "cloud", "tiger", "piano", "green", "light"]


def say(msg: str) -> None:
    """One progress line on stderr."""
    print(f"  {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


class Result:
    """A result dict rewritten atomically to ``path`` on every :meth:`put`."""

    def __init__(self, path: Path) -> None:
        self.path, self.data = Path(path), {}

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.path)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def sync(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def load(hub: Any, base: str, device: str) -> Any:
    """The served base on ``device`` (through the device setting where the loader has one)."""
    from server.model import load_served_base

    if "device" in inspect.signature(load_served_base).parameters:
        loaded = load_served_base(hub, base, device=device)
    else:  # the loader without a device setting: bitsandbytes places 4-bit layers on CUDA
        loaded = load_served_base(hub, base)
    return loaded


def device_memory(device: Any) -> dict[str, int]:
    """CUDA memory allocated now and at the peak of this process (empty on CPU)."""
    import torch

    if torch.device(device).type != "cuda":
        return {}
    return {
        "allocated_bytes": torch.cuda.memory_allocated(device),
        "peak_allocated_bytes": torch.cuda.max_memory_allocated(device),
    }


def model_device(model: Any) -> Any:
    return next(model.parameters()).device


def make_bank(model: Any, adapters: int, rank: int) -> Any:
    """The gathered-LoRA bank, sized up front for ``adapters`` of ``rank`` where it can be."""
    import torch

    from server.lora import LoRABank

    params = inspect.signature(LoRABank).parameters
    sizes = {"max_adapters": adapters, "rank": rank}
    kwargs = {k: v for k, v in sizes.items() if k in params}
    return LoRABank(model, torch.float32, **kwargs)  # LoRA math in fp32, as server.state builds it


def add_adapters(engine: Any, n: int, rank: int) -> list[int]:
    """``n`` seeded random adapters added to the engine's bank; their slots (handles)."""
    from server.lora import parse_adapter
    from server.random_adapter import random_lora_for_shapes

    bank, slots = engine.bank, []
    for i in range(n):
        payload = random_lora_for_shapes(bank.shapes, f"bench{i}", seed=1000 + i, r=rank)
        if hasattr(engine, "add_adapter"):  # the hf engine: exactly what the server does
            slots.append(
                engine.add_adapter(f"bench/bench{i}@1", payload.config(), payload.tensors())
            )
            continue
        parsed = parse_adapter(payload, bank.shapes)
        slots.append(bank.add(parsed["tensors"], parsed["rank"], parsed["scale"]))
    return slots


def prompt_ids(tok: Any, i: int, length: int) -> list[int]:
    """About ``length`` tokens of text (the byte tokenizer: one token per byte)."""
    text = ""
    while len(text) < length:
        text += WORDS[(i + len(text)) % len(WORDS)] + " "
    return tok(text[:length])["input_ids"][:length]


def drive(engine: Any, tok: Any, slots: list[int], s: dict[str, Any], n: int) -> dict[str, Any]:
    """``n`` requests from ``s['clients']`` closed-loop clients; tokens/s, latency, TTFT."""
    from server.engine import GenRequest

    jobs: queue.Queue[int] = queue.Queue()
    for i in range(n):
        jobs.put(i)
    lat, ttft, tokens, errors = [], [], [0], []
    lock = threading.Lock()

    def client() -> None:
        while True:
            try:
                i = jobs.get_nowait()
            except queue.Empty:
                return
            done, events = threading.Event(), []
            req = GenRequest(
                prompt_ids=prompt_ids(tok, i, s["prompt_tokens"]),
                slot=slots[i % len(slots)],
                max_tokens=s["max_tokens"],
                on_event=lambda ev, e=events, d=done: ev[0] != "delta" and (e.append(ev), d.set()),
                timeout_s=600,
            )
            start = time.monotonic()
            req.submitted = start
            engine.submit(req)
            done.wait(600)
            end = time.monotonic()
            with lock:
                if events and events[0][0] == "error":
                    errors.append(str(events[0][1]))
                    continue
                lat.append(end - start)
                ttft.append((req.first_token_at or end) - start)
                tokens[0] += len(req.generated)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(s["clients"])]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors and not lat:
        raise RuntimeError(f"every request failed: {errors[0]}")
    return {
        "requests": n,
        "failures": len(errors),
        "first_error": errors[0] if errors else None,
        "completion_tokens": tokens[0],
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens[0] / wall, 1),
        "latency_p50_ms": round(percentile(lat, 0.5) * 1000, 1),
        "latency_p99_ms": round(percentile(lat, 0.99) * 1000, 1),
        "ttft_p50_ms": round(percentile(ttft, 0.5) * 1000, 1),
        "ttft_p99_ms": round(percentile(ttft, 0.99) * 1000, 1),
    }


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda r: r["tokens_per_s"])
    return {**ordered[len(ordered) // 2], "runs_tokens_per_s": [r["tokens_per_s"] for r in runs]}


def make_engine(loaded: Any, adapters: int, rank: int, max_batch: int) -> Any:
    """The server's ``hf`` engine on ``loaded`` (else the bare batching engine and a bank),
    answering no end token: every request makes exactly its ``max_tokens``."""
    try:
        from server.hf_engine import HFEngine
    except ImportError:
        HFEngine = None  # noqa: N806
    if HFEngine is not None:
        engine = HFEngine(loaded, max_batch=max_batch, max_queue=100_000)
    else:
        from server.engine import Engine

        bank = make_bank(loaded.model, adapters, rank)
        engine = Engine(
            loaded.model, loaded.tokenizer, bank, max_batch=max_batch, max_queue=100_000
        )
    engine.eos_ids = set()
    return engine


def section_serve(hub: Any, base: str, device: str, s: dict[str, Any], out: Result) -> None:
    """single1 / mixed8 / mixed32 on the engine, interleaved, medians."""
    loaded = load(hub, base, device)
    out.put("model_device", str(model_device(loaded.model)))
    engine = make_engine(loaded, 32, s["rank"], s["clients"])
    out.put("engine", type(engine).__name__)
    t0 = time.perf_counter()
    slots = add_adapters(engine, 32, s["rank"])
    out.put("adapters_add_s", round(time.perf_counter() - t0, 2))
    engine.start()
    scenarios = {"single1": slots[:1], "mixed8": slots[:8], "mixed32": slots[:32]}
    out.put("settings", {k: s[k] for k in ("clients", "max_tokens", "prompt_tokens", "rank")})
    try:
        say("serve: warm-up")
        drive(engine, loaded.tokenizer, slots[:8], s, s["clients"])
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in scenarios}
        for rep in range(s["repeats"]):
            for name, chosen in scenarios.items():
                runs[name].append(drive(engine, loaded.tokenizer, chosen, s, s["requests"]))
                say(f"serve: {name} repeat {rep + 1}: {runs[name][-1]['tokens_per_s']} tokens/s")
                out.put(name, median_run(runs[name]))
        out.put("device_memory", device_memory(model_device(loaded.model)))
    finally:
        engine.stop()


def section_naive(hub: Any, base: str, device: str, s: dict[str, Any], out: Result) -> None:
    """PEFT ``adapter_names`` static batch, then the naive set_adapter server, 8 adapters."""
    from server.naive import NaiveEngine

    loaded = load(hub, base, device)
    out.put("model_device", str(model_device(loaded.model)))
    bank_shapes = make_bank_shapes(loaded.model)
    naive = NaiveEngine(hub, loaded.model, loaded.tokenizer)
    naive.stop_at_eos = False
    names = []
    t0 = time.perf_counter()
    for i in range(8):
        from server.random_adapter import random_lora_for_shapes

        payload = random_lora_for_shapes(bank_shapes, f"bench{i}", seed=1000 + i, r=s["rank"])
        naive.attach(i + 1, payload)
        names.append(payload.name)
    out.put("adapters_attach_s", round(time.perf_counter() - t0, 2))
    peft = naive.static_mixed_batch(names, WORDS, s["clients"], s["max_tokens"])
    out.put("peft_adapter_names_static_batch", peft)
    say(f"naive: PEFT adapter_names batch of {s['clients']}: {peft['tokens_per_s']} tokens/s")
    naive.start()
    try:
        got = drive(naive, loaded.tokenizer, list(range(1, 9)), s, s["naive_requests"])
    finally:
        naive.stop()
    out.put("naive8", got)
    say(f"naive: set_adapter server {got['tokens_per_s']} tokens/s")


def make_bank_shapes(model: Any) -> dict[str, tuple[int, int]]:
    """The LoRA-targetable layer shapes of ``model`` (without wrapping anything)."""
    from server.lora import linear_shape

    return {n: sh for n, m in model.named_modules() if (sh := linear_shape(m))}


def sections() -> dict[str, Any]:
    """Section name -> function(hub, base, device, settings, result)."""
    from server.bench_decode import section_decode

    return {"serve": section_serve, "decode": section_decode, "naive": section_naive}


class FirstErrors(logging.Handler):
    """Keeps the first few error records (with tracebacks) in the result: a request's error
    event names only the exception's type, the engine's log line has the rest."""

    def __init__(self, out: Result, keep: int = 3) -> None:
        super().__init__(logging.ERROR)
        self.out, self.keep, self.seen = out, keep, []
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.seen) < self.keep:
            self.seen.append(self.format(record)[-3000:])
            self.out.put("log_errors", self.seen)


def main(argv: list[str]) -> None:
    section, base, device, settings, out_path = argv
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    from hub.plugins import Hub

    torch.set_grad_enabled(False)
    out = Result(Path(out_path))
    logging.getLogger().addHandler(FirstErrors(out))
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setLevel(logging.WARNING)
    logging.getLogger().addHandler(stderr)
    sections()[section](Hub(), base, device, json.loads(settings), out)


if __name__ == "__main__":
    main(sys.argv[1:])
