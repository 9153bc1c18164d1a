"""The direct loader gives the model ``from_pretrained`` gives, or steps aside for it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.plugins.nf4.conftest import _tiny_llama

IDS = torch.tensor([[5, 17, 200, 33, 64, 2, 91]])


def _reference(checkpoint: Path):
    """The same checkpoint through transformers' generic loader."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        checkpoint, dtype=torch.bfloat16, use_safetensors=True
    )
    return model.eval()


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bytes: packed 4-bit data stored as bf16 holds NaN bit patterns."""
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def _assert_same_model(direct, reference) -> None:
    """Same tensors (packed weights and quant stats included), flags, config and logits."""
    ours, theirs = direct.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        assert ours[key].dtype == value.dtype, key
        assert torch.equal(_bytes(ours[key]), _bytes(value)), key
    assert {n: p.requires_grad for n, p in direct.named_parameters()} == {
        n: p.requires_grad for n, p in reference.named_parameters()
    }
    assert {n: type(m).__name__ for n, m in direct.named_modules()} == {
        n: type(m).__name__ for n, m in reference.named_modules()
    }
    for name in ("is_loaded_in_4bit", "is_quantized", "quantization_method"):
        assert getattr(direct, name) == getattr(reference, name), name
    assert direct.config.to_dict() == reference.config.to_dict()
    assert direct.generation_config.to_dict() == reference.generation_config.to_dict()
    assert direct.training is False
    with torch.no_grad():
        assert torch.equal(direct(IDS).logits, reference(IDS).logits)


@pytest.mark.parametrize("method", ["nf4", "fp4"])
def test_direct_load_matches_from_pretrained(quantizers, embedded_base, tmp_path, method):
    checkpoint = tmp_path / method
    quantizers[method].save(quantizers[method].load(embedded_base), checkpoint, {})
    model = quantizers[method].load_quantized(checkpoint)
    assert model.qlora_hub_quant["loader"] == "direct"
    _assert_same_model(model, _reference(checkpoint))


def test_direct_load_ties_embeddings(quantizers, tmp_path):
    source = _tiny_llama(tmp_path / "tied", tie_word_embeddings=True)
    quantizers["nf4"].save(quantizers["nf4"].load(source), tmp_path / "ckpt", {})
    model = quantizers["nf4"].load_quantized(tmp_path / "ckpt")
    assert model.qlora_hub_quant["loader"] == "direct"
    assert model.lm_head.weight is model.model.embed_tokens.weight
    _assert_same_model(model, _reference(tmp_path / "ckpt"))


def test_direct_load_reads_every_shard(quantizers, nf4_model, tmp_path):
    from plugins.nf4.checkpoint import write_checkpoint

    checkpoint = tmp_path / "sharded"
    write_checkpoint(
        checkpoint,
        lambda d: nf4_model.save_pretrained(d, max_shard_size="500KB"),
        tokenizer_from=None,
        manifest={"method": "nf4", "options": {}, "base_fingerprint": "test"},
    )
    shards = json.loads((checkpoint / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(shards.values())) > 2
    model = quantizers["nf4"].load_quantized(checkpoint)
    assert model.qlora_hub_quant["loader"] == "direct"
    _assert_same_model(model, _reference(checkpoint))


def test_bf16_quant_storage_loads_directly(quantizers, embedded_base, tmp_path):
    nf4 = quantizers["nf4"]
    nf4.save(nf4.load(embedded_base, {"quant_storage": "bfloat16"}), tmp_path / "ckpt", {})
    model = nf4.load_quantized(tmp_path / "ckpt")
    assert model.qlora_hub_quant["loader"] == "direct"
    assert model.get_submodule("model.layers.0.mlp.up_proj").weight.dtype == torch.bfloat16
    _assert_same_model(model, _reference(tmp_path / "ckpt"))


def test_keys_from_pretrained_renames_fall_back_to_it(quantizers, tmp_path):
    """Mixtral's per-expert keys on disk are fused on load: only from_pretrained knows how."""
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    config = MixtralConfig(
        vocab_size=320, hidden_size=128, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
    )  # fmt: skip
    MixtralForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp_path / "mixtral")
    nf4 = quantizers["nf4"]
    nf4.save(nf4.load(tmp_path / "mixtral"), tmp_path / "ckpt", {})
    model = nf4.load_quantized(tmp_path / "ckpt")
    assert model.qlora_hub_quant["loader"] == "from_pretrained"
    _assert_same_model(model, _reference(tmp_path / "ckpt"))


def test_int8_checkpoints_use_from_pretrained(quantizers, embedded_base, tmp_path):
    int8 = quantizers["int8"]
    int8.save(int8.load(embedded_base), tmp_path / "ckpt", {})
    assert int8.load_quantized(tmp_path / "ckpt").qlora_hub_quant["loader"] == "from_pretrained"


def test_directly_loaded_base_trains_a_lora_adapter(quantizers, nf4_checkpoint):
    """PEFT's k-bit preparation and a backward pass run on the directly loaded model."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = quantizers["nf4"].load_quantized(nf4_checkpoint)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    peft_model.train()
    loss = peft_model(input_ids=IDS, labels=IDS).loss
    loss.backward()
    grads = [p.grad for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert len(grads) == 2 * 4  # two targets in each of the embedded base's 4 layers
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
