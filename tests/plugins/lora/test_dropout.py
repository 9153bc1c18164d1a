"""LoRA dropout on CPU: the Bernoulli mask of ``nn.Dropout``, exact scaling, seeded, swapped in."""

from __future__ import annotations

import math

import pytest
import torch

from plugins.lora.dropout import LoraDropout, keep_mask, use_lora_dropout
from plugins.lora.method import LoraMethod

P = 0.05
P_EFFECTIVE = round(P * 65536) / 65536  # p on the 16-bit grid


def _within(observed: float, p: float, n: int, sigmas: float = 5.0) -> bool:
    return abs(observed - p) <= sigmas * math.sqrt(p * (1 - p) / n)


def test_each_element_is_dropped_with_probability_p_independently() -> None:
    torch.manual_seed(0)
    n = 4 * 2**20
    dropped = ~keep_mask((n,), P)
    assert _within(dropped.float().mean().item(), P_EFFECTIVE, n)
    # the four 16-bit lanes of a 64-bit draw are each fair
    for lane in range(4):
        assert _within(dropped[lane::4].float().mean().item(), P_EFFECTIVE, n // 4), lane
    # neighbours (same draw and across draws) are dropped together only by chance
    both = (dropped[:-1] & dropped[1:]).float().mean().item()
    assert _within(both, P_EFFECTIVE**2, n)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_other_probabilities(p: float) -> None:
    torch.manual_seed(1)
    n = 2**20
    assert _within((~keep_mask((n,), p)).float().mean().item(), round(p * 65536) / 65536, n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kept_values_are_scaled_exactly_and_gradients_follow_the_mask(dtype) -> None:
    torch.manual_seed(2)
    x = (torch.rand(8, 24, 256) + 0.5).to(dtype).requires_grad_()  # no exact zeros
    layer = LoraDropout(P).train()
    out = layer(x)
    kept = out != 0
    assert out.dtype == dtype and out.shape == x.shape
    assert 0 < (~kept).sum() < x.numel()
    assert torch.equal(out[kept], x.detach()[kept] * (1 / (1 - P)))
    grad = torch.rand_like(x)
    out.backward(grad)
    expected = torch.where(kept, grad * (1 / (1 - P)), torch.zeros((), dtype=dtype))
    assert torch.equal(x.grad, expected)


def test_seeded_draws_repeat_and_differ_between_calls() -> None:
    layer = LoraDropout(P).train()
    x = torch.ones(4, 16, 64)
    torch.manual_seed(7)
    first, second = layer(x), layer(x)
    torch.manual_seed(7)
    assert torch.equal(layer(x), first)
    assert not torch.equal(first, second)


def test_eval_mode_and_zero_p_are_the_identity() -> None:
    x = torch.randn(2, 3, 64)
    assert LoraDropout(P).eval()(x) is x
    assert LoraDropout(0.0).train()(x) is x


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_a_probability_outside_0_1_is_refused(p: float) -> None:
    with pytest.raises(ValueError, match=rf"dropout probability must be in \[0, 1\), got {p}"):
        LoraDropout(p)


def _dropouts(model) -> list[torch.nn.Module]:
    return [
        d for m in model.modules() if hasattr(m, "lora_dropout") for d in m.lora_dropout.values()
    ]


def test_attach_on_cpu_uses_lora_dropout_in_every_lora_module(embedded_base) -> None:
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(embedded_base, dtype=torch.bfloat16)
    model = LoraMethod().attach(base, {"r": 4, "dropout": 0.1})
    dropouts = _dropouts(model)
    assert len(dropouts) == 28  # 4 layers x 7 linear layers
    assert all(type(d) is LoraDropout and d.p == 0.1 for d in dropouts)
    # already swapped: a second pass finds nothing left to replace
    assert use_lora_dropout(model) == 0


def test_attach_without_dropout_keeps_peft_identity(embedded_base) -> None:
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(embedded_base, dtype=torch.bfloat16)
    model = LoraMethod().attach(base, {"r": 4, "dropout": 0.0})
    assert {type(d).__name__ for d in _dropouts(model)} == {"Identity"}
