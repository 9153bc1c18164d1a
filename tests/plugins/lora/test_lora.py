"""The ``lora`` adapter method: options, frozen A, loading from bytes, refusing mismatches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from hub.errors import ValidationError
from hub.testing import AdapterMethodContract
from hub.types import AdapterPayload
from plugins.lora.frozen_a import seeded_a
from plugins.lora.method import LoraMethod


@pytest.fixture
def adapter_method() -> LoraMethod:
    return LoraMethod()


class TestLoraContract(AdapterMethodContract):
    adapter_options = {"r": 4, "alpha": 8, "dropout": 0.0}


class TestFrozenAContract(AdapterMethodContract):
    adapter_options = {"r": 4, "freeze_a": True, "a_seed": 3}


@pytest.fixture
def bf16_base(embedded_base: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(embedded_base, dtype=torch.bfloat16)


@pytest.fixture
def nf4_base(embedded_base: Path):
    import plugins.nf4
    from hub.models import load_base
    from hub.plugins import Hub

    hub = Hub(builtins=False, entry_points=False, extra=[("nf4", plugins.nf4)])
    return load_base(hub, embedded_base).model


def _a_tensors(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}


def test_same_seed_gives_byte_identical_frozen_a(adapter_method, embedded_base: Path) -> None:
    from transformers import AutoModelForCausalLM

    first, second = (
        adapter_method.attach(
            AutoModelForCausalLM.from_pretrained(embedded_base, dtype=torch.bfloat16),
            {"r": 8, "freeze_a": True, "a_seed": 11},
        )
        for _ in range(2)
    )
    a1, a2 = _a_tensors(first), _a_tensors(second)
    assert len(a1) == 28  # 4 layers x 7 linear layers
    assert all(a1[k].float().numpy().tobytes() == a2[k].float().numpy().tobytes() for k in a1)


def test_frozen_a_matches_the_documented_seeded_init(adapter_method, bf16_base) -> None:
    model = adapter_method.attach(bf16_base, {"r": 8, "freeze_a": True, "a_seed": 11})
    name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    weight = dict(model.named_parameters())[name]
    expected = seeded_a(11, "model.layers.0.self_attn.q_proj", (8, 256))
    assert torch.equal(weight.detach().float(), expected.to(weight.dtype).float())


def test_different_seeds_give_different_a(embedded_base: Path) -> None:
    assert not torch.equal(seeded_a(1, "m.q_proj", (4, 64)), seeded_a(2, "m.q_proj", (4, 64)))


def test_freeze_a_leaves_only_b_trainable(adapter_method, bf16_base) -> None:
    model = adapter_method.attach(bf16_base, {"r": 4, "freeze_a": True})
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_B" in n for n in trainable)


def test_default_targets_every_linear_layer_but_the_head(adapter_method, nf4_base) -> None:
    model = adapter_method.attach(nf4_base, {"r": 4})
    targets = set(model.peft_config["default"].target_modules)
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_kbit_base_is_prepared_with_fp32_norms(adapter_method, nf4_base) -> None:
    model = adapter_method.attach(nf4_base, {"r": 4})
    norm = model.base_model.model.model.norm.weight
    assert norm.dtype == torch.float32


def test_unknown_target_module_lists_linear_modules(adapter_method, bf16_base) -> None:
    with pytest.raises(ValidationError) as err:
        adapter_method.attach(bf16_base, {"target_modules": "q_proj,qkv"})
    assert str(err.value) == (
        "unknown target modules qkv: this model's linear modules are down_proj, gate_proj, "
        "k_proj, o_proj, q_proj, up_proj, v_proj (or use all-linear)"
    )


def test_rank_zero_is_refused(adapter_method, bf16_base) -> None:
    with pytest.raises(ValidationError) as err:
        adapter_method.attach(bf16_base, {"r": 0})
    assert str(err.value) == "invalid LoRA options: r must be a positive integer, got 0"


def test_rslora_and_dora_reach_the_peft_config(adapter_method, bf16_base) -> None:
    model = adapter_method.attach(bf16_base, {"r": 4, "use_rslora": True, "use_dora": True})
    config = model.peft_config["default"]
    assert config.use_rslora and config.use_dora
    assert any("lora_magnitude_vector" in n for n, _ in model.named_parameters())


def _payload(adapter_method, base, tmp_path: Path, **options) -> AdapterPayload:
    model = adapter_method.attach(base, {"r": 4, **options})
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)
    adapter_method.save(model, tmp_path / "a")
    return AdapterPayload.from_dir(tmp_path / "a", "a")


def test_load_refuses_wrong_shapes_and_leaves_base_untouched(
    adapter_method, bf16_base, embedded_base: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    payload = _payload(adapter_method, bf16_base, tmp_path)
    tensors = payload.tensors()
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    tensors[key] = torch.zeros(4, 128)
    payload.files[AdapterPayload.WEIGHTS] = save(tensors)
    fresh = AutoModelForCausalLM.from_pretrained(embedded_base, dtype=torch.bfloat16)
    with pytest.raises(ValidationError) as err:
        adapter_method.load(fresh, payload, "x")
    assert str(err.value) == (
        f"adapter a does not fit this base: 1 shape mismatch(es) (first {key} is (4, 128), "
        "expected (4, 256))"
    )
    assert not any("lora" in n for n, _ in fresh.named_modules())


def test_load_refuses_unexpected_tensor_names(
    adapter_method, bf16_base, embedded_base: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    payload = _payload(adapter_method, bf16_base, tmp_path)
    tensors = payload.tensors()
    tensors["base_model.model.evil.lora_A.weight"] = torch.zeros(1)
    payload.files[AdapterPayload.WEIGHTS] = save(tensors)
    fresh = AutoModelForCausalLM.from_pretrained(embedded_base, dtype=torch.bfloat16)
    with pytest.raises(ValidationError, match="1 unexpected tensor"):
        adapter_method.load(fresh, payload, "x")


def test_second_adapter_loads_beside_the_first(
    adapter_method, bf16_base, embedded_base: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    payload = _payload(adapter_method, bf16_base, tmp_path)
    fresh = AutoModelForCausalLM.from_pretrained(embedded_base, dtype=torch.bfloat16)
    model = adapter_method.load(fresh, payload, "one")
    model = adapter_method.load(model, payload, "two")
    assert set(model.peft_config) == {"one", "two"}


def test_lora_plugin_module_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, plugins.lora, plugins.paged, plugins.trainer; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_attach_and_load_print_no_transformers_deprecation_warning(
    adapter_method, nf4_base, bf16_base, tmp_path: Path
) -> None:
    """PEFT's read of a deprecated transformers property stays out of users' output."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trained = adapter_method.attach(nf4_base, {"r": 4})
        trained.save_pretrained(tmp_path)
        adapter_method.load(bf16_base, AdapterPayload.from_dir(tmp_path, "x@1"), "x")
    assert [str(w.message) for w in caught if "is_gradient_checkpointing" in str(w.message)] == []


def _lora_grads(model, checkpointing: bool) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    peft_model = LoraMethod().attach(
        model, {"r": 4, "dropout": 0.0, "gradient_checkpointing": checkpointing}
    )
    for n, p in peft_model.named_parameters():
        if "lora_B" in n:  # B starts at zero: give A a gradient too
            torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(len(n)))
    peft_model.train()
    ids = torch.arange(3, 19).reshape(2, 8)
    peft_model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.requires_grad}


def test_gradient_checkpointing_is_non_reentrant_on_every_decoder_layer(nf4_base) -> None:
    model = LoraMethod().attach(nf4_base, {"r": 4, "gradient_checkpointing": True})
    layers = model.base_model.model.model.layers
    assert all(layer.gradient_checkpointing for layer in layers)
    assert {tuple(layer._gradient_checkpointing_func.keywords.items()) for layer in layers} == {
        (("use_reentrant", False),)
    }


def test_gradient_checkpointing_gives_the_same_lora_gradients(embedded_base: Path) -> None:
    import plugins.nf4
    from hub.models import load_base
    from hub.plugins import Hub

    hub = Hub(builtins=False, entry_points=False, extra=[("nf4", plugins.nf4)])
    plain = _lora_grads(load_base(hub, embedded_base, device="cpu").model, False)
    recomputed = _lora_grads(load_base(hub, embedded_base, device="cpu").model, True)
    assert plain.keys() == recomputed.keys() and len(plain) == 56
    assert all(plain[n].abs().sum() > 0 for n in plain)
    for name, grad in plain.items():
        torch.testing.assert_close(recomputed[name], grad, rtol=1e-4, atol=1e-6)
