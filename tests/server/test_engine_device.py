"""The engine's device discipline and per-token cost: one host read per step, a KV cache
that grows in place, chunked prefill, incremental text, a preallocated LoRA bank."""

from __future__ import annotations

import random
import threading
import time

import pytest

from server.random_adapter import random_lora_payload

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def loaded(embedded_base):
    from hub.plugins import Hub
    from server.model import load_served_base

    return load_served_base(Hub(), embedded_base)


def make_engine(loaded, **kw):
    from server.engine import Engine
    from server.lora import LoRABank

    return Engine(loaded.model, loaded.tokenizer, LoRABank(loaded.model), eos_ids=set(), **kw)


def submit_all(engine, prompts: list[list[int]], max_tokens: int, **kw):
    """Submit every prompt at once; wait for all; the requests."""
    from server.engine import GenRequest

    left = threading.Semaphore(0)
    reqs = [
        GenRequest(
            prompt_ids=p,
            slot=0,
            max_tokens=max_tokens,
            on_event=lambda ev: ev[0] != "delta" and left.release(),
            **kw,
        )
        for p in prompts
    ]
    for req in reqs:
        engine.submit(req)
    for _ in reqs:
        assert left.acquire(timeout=120)
    return reqs


PROMPTS = [[5, 9, 33, 70], [12], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50], [7, 7]]


def test_a_plain_batch_reads_the_device_once_per_step(loaded) -> None:
    """Every forward pass that samples reads one tensor back; nothing else in the loop does."""
    engine = make_engine(loaded).start()
    try:
        reqs = submit_all(engine, PROMPTS, max_tokens=6)
    finally:
        engine.stop()
    assert all(len(r.generated) == 6 for r in reqs)
    assert engine.stats["steps"] >= 6
    assert engine.stats["syncs"] == engine.stats["steps"]


def test_tokens_do_not_depend_on_batching_or_prefill_chunks(loaded) -> None:
    """Greedy tokens of prompts of different lengths batched together, with prompts cut in
    chunks of 3 columns, equal each prompt run alone (the in-place cache is the same cache)."""
    alone = []
    engine = make_engine(loaded).start()
    try:
        for prompt in PROMPTS:
            alone.append(submit_all(engine, [prompt], max_tokens=12)[0].generated)
        together = [r.generated for r in submit_all(engine, PROMPTS, max_tokens=12)]
    finally:
        engine.stop()
    chunked_engine = make_engine(loaded, prefill_chunk=3).start()
    try:
        chunked = [r.generated for r in submit_all(chunked_engine, PROMPTS, max_tokens=12)]
    finally:
        chunked_engine.stop()
    assert together == alone
    assert chunked == alone


def test_the_kv_cache_grows_in_place(loaded) -> None:
    """200 decode steps reallocate the cache a few times (capacity doubling), not per step."""
    engine = make_engine(loaded)
    buffers = set()
    engine.on_step = lambda rows: (
        engine.batch.layers[0] and buffers.add(engine.batch.layers[0][0].data_ptr())
    )
    engine.start()
    try:
        (req,) = submit_all(engine, [[5, 9, 33]], max_tokens=200)
    finally:
        engine.stop()
    assert len(req.generated) == 200
    assert engine.stats["steps"] >= 200
    assert 1 <= len(buffers) <= 3  # 64 -> 128 -> 256 columns


def test_a_long_prefill_lets_running_rows_decode(loaded) -> None:
    """A prompt of 40 columns in chunks of 4 takes 10 passes; the running row decodes between."""
    from server.engine import GenRequest

    engine = make_engine(loaded, prefill_chunk=4)
    # per forward pass: long prompt in flight, runner's tokens, requests the engine reports active
    records: list[tuple[bool, int, int]] = []
    arrived = threading.Event()

    def on_step(rows: int) -> None:
        records.append((engine.prefill is not None, len(runner.generated), engine.active))
        if started.is_set() and not arrived.is_set():
            # the runner waits for the long prompt once its text began: on a loaded machine
            # it could otherwise decode all 60 tokens before the long prompt is submitted
            deadline = time.monotonic() + 60
            while not engine.queue_depth and time.monotonic() < deadline:
                time.sleep(0.005)
            arrived.set()

    engine.on_step = on_step
    started, finished = threading.Event(), threading.Event()
    runner = GenRequest(
        prompt_ids=[5, 6],
        slot=0,
        max_tokens=60,
        on_event=lambda ev: (started if ev[0] == "delta" else finished).set(),
    )
    engine.start()
    try:
        engine.submit(runner)
        assert started.wait(60)
        (long,) = submit_all(engine, [list(range(10, 50))], max_tokens=3)
        assert finished.wait(60)
        engine.on_step = None
        solo_runner, solo_long = (
            submit_all(engine, [p], max_tokens=m)[0].generated
            for p, m in (([5, 6], 60), (list(range(10, 50)), 3))
        )
    finally:
        engine.stop()
    in_flight = [tokens for prefilling, tokens, _ in records if prefilling]
    assert len(in_flight) >= 10  # 10 chunk passes, plus the decode passes between them
    # the request being prefilled counts as active beside the decoding runner (the gauge
    # and the idle collection's check see it)
    # (before, only the runner's row: never 2 while a prompt was being prefilled)
    assert 2 in {active for prefilling, _, active in records if prefilling}
    assert all(active >= 1 for prefilling, _, active in records if prefilling)
    assert max(in_flight) - min(in_flight) >= 9  # the runner gained a token after each chunk
    # the runner's cache was shifted right to make room for the longer prompt: same tokens
    assert runner.generated == solo_runner
    assert long.generated == solo_long


def test_incremental_text_equals_decoding_the_whole_completion(loaded) -> None:
    """Random token ids (bytes split across tokens included) decode the same, step by step."""
    from server.engine import _Detok

    tok = loaded.tokenizer
    rng = random.Random(7)
    vocab = len(tok)
    for _ in range(20):
        ids = [rng.randrange(vocab) for _ in range(30)]
        detok = _Detok()
        for i, t in enumerate(ids):
            text = detok.add(tok, t)
            full = tok.decode(ids[: i + 1], skip_special_tokens=True)
            if not full.endswith("\ufffd"):
                assert text == full, ids[: i + 1]


def test_everything_the_engine_allocates_is_on_the_model_s_device(loaded) -> None:
    from server.lora import model_device

    engine = make_engine(loaded).start()
    try:
        (req,) = submit_all(engine, [[5, 9]], max_tokens=3, temperature=1.0, seed=3)
    finally:
        engine.stop()
    device = model_device(loaded.model)
    assert engine.device == device
    assert req.generator.device == device
    for t in (engine.batch.mask, engine.batch.pos, engine.batch.slots, engine.batch.last):
        assert t.device == device


@pytest.fixture
def fresh(embedded_base):
    from hub.plugins import Hub
    from server.model import load_served_base

    return load_served_base(Hub(), embedded_base)


def _adapter(embedded_base, bank, seed: int, r: int = 8):
    from server.lora import parse_adapter

    parsed = parse_adapter(
        random_lora_payload(embedded_base, f"a{seed}", seed=seed, r=r), bank.shapes
    )
    return parsed["tensors"], parsed["rank"], parsed["scale"]


def test_adapter_stacks_are_preallocated_to_the_bank_s_capacity(fresh, embedded_base) -> None:
    """Adding up to ``max_adapters`` writes into free slots of the same stacks; a removed
    slot is reused; one more than the capacity doubles it once."""
    from server.lora import LoRABank

    bank = LoRABank(fresh.model, max_adapters=3)
    slots = [bank.add(*_adapter(embedded_base, bank, seed)) for seed in (1, 2, 3)]
    layer = next(iter(bank.weights))
    stack = bank.weights[layer][0]
    assert slots == [1, 2, 3]
    assert stack.shape[0] == 4  # 3 adapters + the base
    assert bank.reallocations == 0
    bank.remove(2)
    assert bank.add(*_adapter(embedded_base, bank, 4)) == 2
    assert bank.weights[layer][0].data_ptr() == stack.data_ptr()
    assert bank.add(*_adapter(embedded_base, bank, 5)) == 4
    assert bank.weights[layer][0].shape[0] == 8
    assert bank.reallocations == 1
    assert bank.weights[layer][0].device == bank.device
