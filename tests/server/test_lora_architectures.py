"""The gathered-LoRA bank on every architecture, against PEFT, in process (no HTTP).

Tiny random models from tests/server/test_architectures.py. Each test pins a
failure the issue found: GPT-2, Bloom and Falcon adapters refused ("targets no
linear layer"), OPT's 2-D feed-forward inputs crashing the engine and the base
rows of its batch, ``alpha_pattern`` served with one global scale, and
``rank_pattern`` refused.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from hub.errors import ValidationError
from tests.server.test_architectures import (
    ARCHITECTURES,
    PROMPTS,
    lora_pair,
    lora_payload,
    tiny_models,
    torch_max,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, embedded_base: Path):
    return tiny_models(tmp_path_factory.mktemp("tiny"), embedded_base)


@pytest.fixture(scope="module")
def hub():
    from hub.plugins import Hub

    return Hub()


def gathered_vs_peft(hub, base: Path, *, seed: int, quantizer: str = "nf4", **config: Any):
    """Logits of one adapter row and one base row in one gathered forward pass, and PEFT's.

    The adapter is a random :func:`lora_pair` (``config``: LoraConfig fields);
    PEFT's logits come from the ``PeftModel`` it was saved from. Returns
    ``(adapter_row, peft_row, base_row, plain_base_row, payload)``.
    """
    import torch

    from server.lora import LoRABank, parse_adapter

    load = hub.quantizers[quantizer].load
    payload, reference = lora_pair(load(base), "p", seed=seed, **config)
    served = load(base)
    bank = LoRABank(served, torch.float32)
    parsed = parse_adapter(payload, bank.shapes)
    ids = torch.tensor([[40, 41, 42, 43, 44], [50, 51, 52, 53, 54]])
    with torch.no_grad(), bank.lock:
        slot = bank.add(parsed["tensors"], parsed["rank"], parsed["scale"])
        bank.rows = torch.tensor([slot, 0])
        mixed = served(input_ids=ids).logits.float()
        expected = reference(input_ids=ids[:1]).logits.float()
        with reference.disable_adapter():
            plain = reference(input_ids=ids[1:]).logits.float()
    return mixed[:1], expected, mixed[1:], plain, payload


@pytest.mark.parametrize("kind", list(ARCHITECTURES))
def test_gathered_lora_equals_peft_on_every_architecture(hub, tiny, kind: str) -> None:
    """By the adapter's own module names: ``transformer.h.N`` (GPT-2, Bloom, Falcon) too.

    The base row of the same batch is exactly the plain base; OPT's 2-D
    feed-forward inputs carry the right row's adapter.
    """
    base = tiny(kind)
    got, expected, base_row, plain, _ = gathered_vs_peft(hub, base, seed=1)
    assert torch_max(plain - expected) > 0.05  # the adapter matters
    assert torch_max(got - expected) < 0.03  # bf16 rounding of the base layers' outputs
    assert torch_max(base_row - plain) == 0.0


@pytest.mark.parametrize(
    "patterns",
    [
        {"alpha_pattern": {"q_proj": 64, "down_proj": 1}},
        {"rank_pattern": {"mlp.down_proj": 8, "v_proj": 2}, "alpha_pattern": {"q_proj": 64}},
        {"rank_pattern": {"up_proj": 8}, "use_rslora": True},
    ],
    ids=["alpha", "rank+alpha", "rank+rslora"],
)
def test_rank_and_alpha_patterns_scale_each_module(hub, tiny, patterns) -> None:
    """Per-module ranks and alphas are applied as PEFT applies them, not one global scale."""
    from server.lora import parse_adapter

    base = tiny("llama")
    got, expected, _, plain, payload = gathered_vs_peft(hub, base, seed=2, **patterns)
    assert torch_max(got - expected) < 0.03
    parsed = parse_adapter(payload, _shapes(hub, base))
    scales = parsed["scale"]
    if "alpha_pattern" in patterns:
        assert scales["model.layers.0.self_attn.q_proj"] == 64 / 4
    assert scales["model.layers.1.self_attn.k_proj"] == (8 / 2 if "use_rslora" in patterns else 2)


def _shapes(hub, base: Path) -> dict[str, tuple[int, int]]:
    import torch

    from server.lora import LoRABank

    return LoRABank(hub.quantizers["none"].load(base), torch.float32).shapes


def test_conv1d_layers_of_an_unquantized_gpt2_are_served(hub, tiny) -> None:
    """GPT-2 kept in bf16 keeps its ``Conv1D`` layers (weight ``(in, out)``)."""
    import torch

    base = tiny("gpt2")
    model = hub.quantizers["none"].load(base)
    assert type(model.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    got, expected, base_row, plain, _ = gathered_vs_peft(hub, base, seed=3, quantizer="none")
    assert torch_max(plain - expected) > 0.05
    assert torch_max(got - expected) < 0.03
    assert torch.equal(base_row, plain)


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        (
            {"use_dora": True},
            "use_dora is not servable: DoRA rescales every output column by a norm of W + BA, "
            "which the gathered path does not compute; merge it (qlora-hub merge) or serve it "
            "with PEFT",
        ),
        (
            {"modules_to_save": ["lm_head"]},
            "modules_to_save is not servable: it carries full trained copies of ['lm_head'] that "
            "cannot change per row; retrain without modules_to_save",
        ),
    ],
    ids=["dora", "modules_to_save"],
)
def test_what_cannot_be_served_is_refused_with_the_reason(hub, tiny, config, reason) -> None:
    from server.lora import parse_adapter

    base = tiny("llama")
    payload = lora_payload(hub.quantizers["nf4"].load(base), "odd", seed=4, **config)
    with pytest.raises(ValidationError) as err:
        parse_adapter(payload, _shapes(hub, base))
    assert str(err.value) == f"adapter {payload.ref}: {reason}"


def engine_for(hub, base: Path):
    """An engine over ``base`` (4-bit) and its bank; stop it after use."""
    import torch

    from server.engine import Engine
    from server.lora import LoRABank
    from server.model import load_served_base

    loaded = load_served_base(hub, base)
    bank = LoRABank(loaded.model, torch.float32)
    return Engine(loaded.model, loaded.tokenizer, bank, eos_ids={2}).start(), loaded, bank


def generate_all(engine, tokenizer, jobs: list[tuple[str, int]], max_tokens: int = 6) -> list:
    """Submit ``(prompt, slot)`` jobs at once; their texts and final events, in order."""
    from server.engine import GenRequest

    results: list[Any] = [None] * len(jobs)
    done = [threading.Event() for _ in jobs]

    def on_event(i: int):
        chunks: list[str] = []

        def handle(ev):
            if ev[0] == "delta":
                chunks.append(ev[1])
            else:
                results[i] = ("".join(chunks), ev[:2])
                done[i].set()

        return handle

    reqs = [
        GenRequest(
            prompt_ids=tokenizer(p)["input_ids"],
            slot=s,
            max_tokens=max_tokens,
            on_event=on_event(i),
        )
        for i, (p, s) in enumerate(jobs)
    ]
    with engine.bank.lock:  # hold the engine so that every request joins one batch
        for req in reqs:
            engine.submit(req)
    for ev in done:
        assert ev.wait(120)
    return results


def test_opt_serves_a_mixed_batch_and_its_base_rows(hub, tiny) -> None:
    """OPT flattens to 2-D before fc1/fc2: its batch used to fail, base rows included."""
    from server.lora import parse_adapter

    base = tiny("opt")
    engine, loaded, bank = engine_for(hub, base)
    try:
        payload = lora_payload(hub.quantizers["nf4"].load(base), "opt-a", seed=5)
        parsed = parse_adapter(payload, bank.shapes)
        slot = bank.add(parsed["tensors"], parsed["rank"], parsed["scale"])
        jobs = [(p, s) for p in PROMPTS for s in (slot, 0)]
        alone = [generate_all(engine, loaded.tokenizer, [job])[0] for job in jobs]
        mixed = generate_all(engine, loaded.tokenizer, jobs)
    finally:
        engine.stop()
    assert all(end == ("done", "length") for _, end in mixed)
    assert mixed == alone
    assert alone[0][0] != alone[1][0]  # the adapter row differs from the base row
