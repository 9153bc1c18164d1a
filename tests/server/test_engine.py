"""The engine and the gathered-LoRA bank, in process (no HTTP)."""

from __future__ import annotations

import threading

import pytest

from hub.errors import ValidationError
from server.random_adapter import random_lora_payload


@pytest.fixture(scope="module")
def served(embedded_base):
    import torch

    from hub.plugins import Hub
    from server.engine import Engine
    from server.lora import LoRABank
    from server.model import load_served_base

    hub = Hub()
    loaded = load_served_base(hub, embedded_base)
    bank = LoRABank(loaded.model, torch.float32)
    engine = Engine(loaded.model, loaded.tokenizer, bank, eos_ids={2}).start()
    yield hub, loaded, bank, engine
    engine.stop()


def generate(engine, tokenizer, prompt, slot, **kw):
    from server.engine import GenRequest

    done, events = threading.Event(), []

    def on_event(ev):
        events.append(ev)
        if ev[0] != "delta":
            done.set()

    req = GenRequest(prompt_ids=tokenizer(prompt)["input_ids"], slot=slot, on_event=on_event, **kw)
    engine.submit(req)
    assert done.wait(120)
    text = "".join(e[1] for e in events if e[0] == "delta")
    return req, text, events[-1]


def test_gathered_lora_gives_the_same_logits_as_peft(served, embedded_base) -> None:
    """Equal to PEFT's LoRA on the same 4-bit base up to bf16 rounding; far from the plain base."""
    import torch

    from server.lora import parse_adapter
    from server.model import load_served_base

    hub, loaded, bank, _ = served
    payload = random_lora_payload(embedded_base, "a", seed=3, r=8)
    parsed = parse_adapter(payload, bank.shapes)
    reference = load_served_base(hub, embedded_base)
    peft_model = hub.adapters["lora"].load(reference.model, payload, "a")
    ids = torch.tensor([loaded.tokenizer("hello: the quick brown fox")["input_ids"]])
    with torch.no_grad(), bank.lock:
        slot = bank.add(parsed["tensors"], parsed["rank"], parsed["scale"])
        bank.rows = torch.tensor([slot])
        gathered = loaded.model(input_ids=ids).logits.float()
        bank.rows = torch.tensor([0])
        plain = loaded.model(input_ids=ids).logits.float()
        bank.remove(slot)
        expected = peft_model(input_ids=ids).logits.float()
    assert (gathered - expected).abs().max().item() < 0.05
    assert (plain - expected).abs().max().item() > 0.5


def test_stop_string_cuts_the_text_and_finishes_with_stop(served) -> None:
    _, loaded, _, engine = served
    _, full, _ = generate(engine, loaded.tokenizer, "zz", 0, max_tokens=8)
    stop = full[2:4]
    _, text, end = generate(engine, loaded.tokenizer, "zz", 0, max_tokens=8, stop=[stop])
    assert text == full[: full.index(stop)]
    assert end[:2] == ("done", "stop")


def test_max_tokens_one_finishes_after_one_token_with_length(served) -> None:
    _, loaded, _, engine = served
    req, _, end = generate(engine, loaded.tokenizer, "abc", 0, max_tokens=1)
    assert len(req.generated) == 1
    assert end == (
        "done",
        "length",
        {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    )


def test_same_seed_samples_the_same_tokens(served) -> None:
    _, loaded, _, engine = served
    a, _, _ = generate(
        engine, loaded.tokenizer, "abc", 0, max_tokens=8, temperature=1.0, top_p=0.9, seed=5
    )
    b, _, _ = generate(
        engine, loaded.tokenizer, "abc", 0, max_tokens=8, temperature=1.0, top_p=0.9, seed=5
    )
    assert a.generated == b.generated


def test_full_queue_refuses_new_requests(served) -> None:
    from server.engine import Engine, GenRequest, QueueFullError

    _, loaded, bank, _ = served
    idle = Engine(
        loaded.model, loaded.tokenizer, bank, max_queue=1
    )  # never started: nothing drains
    idle.submit(GenRequest(prompt_ids=[9], slot=0, max_tokens=1, on_event=lambda ev: None))
    with pytest.raises(QueueFullError):
        idle.submit(GenRequest(prompt_ids=[9], slot=0, max_tokens=1, on_event=lambda ev: None))


def test_cancelled_request_finishes_as_cancelled(served) -> None:
    from server.engine import GenRequest

    _, loaded, _, engine = served
    done, events = threading.Event(), []
    req = GenRequest(
        prompt_ids=[9, 10],
        slot=0,
        max_tokens=400,
        on_event=lambda ev: (events.append(ev), ev[0] != "delta" and done.set()),
    )
    req.cancel()
    engine.submit(req)
    assert done.wait(60)
    assert events[-1][:2] == ("done", "cancelled")
    assert len(req.generated) < 400


def test_adapter_with_wrong_shapes_is_refused(served, embedded_base) -> None:
    from safetensors.torch import load, save

    from server.lora import parse_adapter

    _, _, bank, _ = served
    payload = random_lora_payload(embedded_base, "bad", seed=4, r=8)
    tensors = load(payload.files[payload.WEIGHTS])
    key = next(k for k in tensors if "q_proj.lora_A" in k)
    tensors[key] = tensors[key][:, :128].contiguous()
    payload.files[payload.WEIGHTS] = save(tensors)
    with pytest.raises(ValidationError, match="q_proj needs A"):
        parse_adapter(payload, bank.shapes)


def test_request_past_its_timeout_ends_with_a_timeout_error(served) -> None:
    from server.engine import GenRequest

    _, _, _, engine = served
    done, events = threading.Event(), []
    req = GenRequest(
        prompt_ids=[9, 10],
        slot=0,
        max_tokens=400,
        timeout_s=0.0,  # already past its deadline at the first step
        on_event=lambda ev: (events.append(ev), ev[0] != "delta" and done.set()),
    )
    engine.submit(req)
    assert done.wait(60)
    assert events[-1][:2] == ("error", "timeout")  # the API answers 504
    assert len(req.generated) < 400
