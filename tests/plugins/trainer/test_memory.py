"""The QLoRA memory estimate, the measured peak, and the Trainer's precision per device."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from plugins.trainer.memory import PeakMemory, activation_bytes, qlora_estimate, trainer_precision

CONFIG = SimpleNamespace(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=100,
)  # fmt: skip
ACCOUNT = {
    "packed_weight_bytes": 1000,
    "quant_state_bytes": 200,
    "other_base_bytes": 300,
    "trainable_params": 10,
    "trainable_bytes": 40,
}


def test_activations_count_every_layer_or_only_layer_inputs_with_checkpointing() -> None:
    # 2 x 8 tokens; per token and layer 15h + 3kv + 5i = 960 + 96 + 640 values of 2 bytes
    per_layer = 16 * 1696 * 2
    logits = 16 * 100 * (2 + 8)
    full = activation_bytes(CONFIG, 2, 8, gradient_checkpointing=False, compute_bytes=2)
    assert full == 2 * per_layer + logits
    saved = activation_bytes(CONFIG, 2, 8, gradient_checkpointing=True, compute_bytes=2)
    assert saved == 2 * 16 * 64 * 2 + per_layer + logits


@pytest.mark.parametrize(("bits", "optimizer_bytes"), [(32, 80), (8, 20)])
def test_estimate_adds_weights_lora_optimizer_and_activations(bits, optimizer_bytes) -> None:
    est = qlora_estimate(
        {**ACCOUNT, "peak_bytes": 10_000},
        config=CONFIG,
        batch_shape=(2, 8),
        gradient_checkpointing=False,
        compute_bytes=2,
        state_bits=bits,
    )
    activations = activation_bytes(CONFIG, 2, 8, gradient_checkpointing=False, compute_bytes=2)
    assert (est["weights_4bit_bytes"], est["lora_bytes"], est["optimizer_bytes"]) == (
        1200,
        80,
        optimizer_bytes,
    )
    assert est["total_bytes"] == 1200 + 300 + 80 + optimizer_bytes + activations
    assert est["peak_over_estimate"] == round(10_000 / est["total_bytes"], 3)


def test_trainer_autocasts_in_the_base_dtype_only_on_cuda() -> None:
    def base(dtype):
        return SimpleNamespace(dtype=dtype)

    assert trainer_precision(base(torch.bfloat16), "cuda") == {"bf16": True}
    assert trainer_precision(base(torch.float16), torch.device("cuda", 1)) == {"fp16": True}
    assert trainer_precision(base(torch.float32), "cuda") == {}
    assert trainer_precision(base(torch.bfloat16), "cpu") == {}


def test_peak_on_the_cpu_is_the_process_peak_rss() -> None:
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    report = PeakMemory("cpu").report()
    assert (report["device"], report["peak_kind"]) == ("cpu", "rss")
    assert report["peak_bytes"] >= before > 0
