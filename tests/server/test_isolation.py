"""One bad row never hurts another: the engine ends only the failing row, in process.

Every test runs a batch of 16 requests in which one is poisoned and compares the 15 others
with the same requests each run alone (greedy, so the text must be identical).
"""

from __future__ import annotations

import threading

import pytest

from server.random_adapter import random_lora_payload

PROMPTS = ["hello", "abc", "go:", "the quick", "zz", "lora", "ok", "xyz"]
MAX_TOKENS = 10


def add_adapter(bank, payload, scale_b: float = 1.0) -> int:
    """Put ``payload`` in the bank (its B matrices multiplied by ``scale_b``); the slot."""
    from safetensors.torch import load, save

    from server.lora import parse_adapter

    if scale_b != 1.0:
        tensors = load(payload.files[payload.WEIGHTS])
        tensors = {k: (v * scale_b if "lora_B" in k else v) for k, v in tensors.items()}
        payload.files[payload.WEIGHTS] = save(tensors)
    parsed = parse_adapter(payload, bank.shapes)
    with bank.lock:
        return bank.add(parsed["tensors"], parsed["rank"], parsed["scale"])


@pytest.fixture(scope="module")
def env(embedded_base):
    """``(engine, tokenizer, slots, poisoned_slot)``: base + two random adapters + a 1e30 one."""
    import torch

    from hub.plugins import Hub
    from server.engine import Engine
    from server.lora import LoRABank
    from server.model import load_served_base

    loaded = load_served_base(Hub(), embedded_base)
    bank = LoRABank(loaded.model, torch.float32)
    slots = [0]
    for i in range(2):
        slots.append(add_adapter(bank, random_lora_payload(embedded_base, f"a{i}", seed=40 + i)))
    poisoned = add_adapter(bank, random_lora_payload(embedded_base, "huge", seed=50), 1e30)
    engine = Engine(loaded.model, loaded.tokenizer, bank, eos_ids={2}).start()
    yield engine, loaded.tokenizer, slots, poisoned
    engine.stop()


class Outcome:
    """What one request received: its text, its last event, and whether its pin was released."""

    def __init__(self) -> None:
        self.deltas: list[str] = []
        self.end: tuple | None = None
        self.done = threading.Event()
        self.released = threading.Event()

    def on_event(self, event: tuple) -> None:
        if event[0] == "delta":
            self.deltas.append(event[1])
        else:
            self.end = event
            self.done.set()

    @property
    def text(self) -> str:
        return "".join(self.deltas)


def request(tokenizer, i: int, slot: int, outcome: Outcome, **kw):
    from server.engine import GenRequest

    prompt = PROMPTS[i % len(PROMPTS)]
    return GenRequest(
        prompt_ids=kw.pop("prompt_ids", None) or tokenizer(prompt)["input_ids"],
        slot=slot,
        max_tokens=MAX_TOKENS,
        on_event=kw.pop("on_event", outcome.on_event),
        release=outcome.released.set,
        request_id=kw.pop("request_id", f"req-{i}"),
        **kw,
    )


def run_together(engine, reqs, outcomes) -> None:
    """Submit every request while the worker waits, so they all join the same batch."""
    with engine._cond:  # the worker takes this lock at the top of each step
        for req in reqs:
            engine.submit(req)
    for outcome in outcomes:
        assert outcome.done.wait(120), "a request never finished"


def batch_with(env, sixteenth) -> tuple[list[Outcome], Outcome]:
    """The 15 healthy requests plus ``sixteenth(outcome)`` at position 8 of one batch."""
    engine, tok, slots, _ = env
    outcomes = [Outcome() for _ in range(15)]
    reqs = [request(tok, i, slots[i % len(slots)], o) for i, o in enumerate(outcomes)]
    extra = Outcome()
    reqs.insert(7, sixteenth(extra))
    run_together(engine, reqs, [*outcomes, extra])
    return outcomes, extra


def assert_untouched(baseline: list[Outcome], together: list[Outcome]) -> None:
    for i, (healthy, batched) in enumerate(zip(baseline, together, strict=True)):
        assert batched.end is not None and batched.end[0] == "done", (i, batched.end)
        assert batched.text == healthy.text, i
        assert batched.end == healthy.end, i
        assert batched.released.is_set()


def run_alone(env) -> list[Outcome]:
    """The 15 healthy requests of :func:`batch_with`, each run alone (one row per batch)."""
    engine, tok, slots, _ = env
    outcomes = [Outcome() for _ in range(15)]
    for i, outcome in enumerate(outcomes):
        run_together(engine, [request(tok, i, slots[i % len(slots)], outcome)], [outcome])
    return outcomes


@pytest.fixture(scope="module")
def alone(env) -> list[Outcome]:
    """The reference: every healthy request's text and end when it runs alone."""
    return run_alone(env)


def compare(env, alone, poisoned) -> Outcome:
    """Run the batch with ``poisoned``; the 15 others must get exactly the text and end they
    get when each runs alone (greedy; the engine computes in float32 on this CPU)."""
    together, bad = batch_with(env, poisoned)
    assert_untouched(alone, together)
    assert bad.released.is_set()
    return bad


def test_an_adapter_with_weights_scaled_by_1e30_fails_only_its_own_row(env, alone) -> None:
    _, tok, _, poisoned = env
    bad = compare(env, alone, lambda o: request(tok, 3, poisoned, o, request_id="req-poisoned"))
    assert bad.end[0] == "error"
    assert "non-finite logits" in bad.end[1]
    assert "req-poisoned" in bad.end[1]  # the error names the request id


def test_a_request_whose_sampling_breaks_leaves_the_others_untouched(env, alone) -> None:
    """``temperature`` 1e-40 made torch.multinomial raise and failed all 16 rows."""
    _, tok, _, _ = env
    compare(env, alone, lambda o: request(tok, 3, 0, o, temperature=1e-40, seed=1))


def test_a_row_whose_streaming_raises_ends_alone(env, alone) -> None:
    _, tok, _, _ = env

    def broken(outcome: Outcome):
        def on_event(event: tuple) -> None:
            outcome.on_event(event)
            if event[0] == "delta":
                raise RuntimeError("receiver is gone")

        return request(tok, 3, 0, outcome, on_event=on_event)

    bad = compare(env, alone, broken)
    assert bad.end[0] == "error"
    assert "decoding failed: RuntimeError: receiver is gone" in bad.end[1]


def test_a_row_that_breaks_the_prefill_fails_alone(env, alone) -> None:
    """A token id past the vocabulary makes the joint prefill raise: only its row fails;
    the others are prefilled one by one and get their solo text."""
    _, tok, _, _ = env
    bad = compare(env, alone, lambda o: request(tok, 0, 0, o, prompt_ids=[10**7]))
    assert bad.end[0] == "error"
    assert "generation failed (prefill)" in bad.end[1]


def test_a_seed_outside_0_to_2_63_is_refused_at_submit(env) -> None:
    from server.engine import GenRequest

    engine = env[0]
    req = GenRequest(prompt_ids=[9], slot=0, max_tokens=1, on_event=lambda ev: None, seed=2**64)
    with pytest.raises(ValueError, match=r"seed 18446744073709551616 is outside 0..2\^63-1"):
        engine.submit(req)
    assert engine.queue_depth == 0


def test_a_cancelled_request_gets_no_further_forward_pass(env) -> None:
    """The worker drops a cancelled row before the next forward pass, not after it."""
    engine, tok, _, _ = env
    gate, passes = threading.Semaphore(0), []

    def on_step(rows: int) -> None:
        passes.append(rows)
        gate.acquire()  # the test lets the engine take one step at a time

    outcome = Outcome()
    req = request(tok, 0, 0, outcome)
    req.max_tokens = 400
    engine.on_step = on_step
    try:
        engine.submit(req)
        for _ in range(3):  # prefill + two decode steps
            gate.release()
        while len(passes) < 4:  # the fourth forward pass is waiting at the gate
            threading.Event().wait(0.01)
        with engine._cond:  # the worker stops at the top of its next step
            gate.release()
            while len(req.generated) < 4:
                threading.Event().wait(0.01)
            req.cancel()  # between two steps
        for _ in range(2):
            gate.release()  # room for a fifth pass (there must be none)
        assert outcome.done.wait(60)
        forward_passes = len(passes)
    finally:
        engine.on_step = None
        for _ in range(8):
            gate.release()
    assert outcome.end[:2] == ("done", "cancelled")
    assert forward_passes == 4
    assert len(req.generated) == 4
