"""Fixtures for the nf4 plugin tests: quantizers, a saved checkpoint, small odd-shaped models."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def quantizers():
    """The quantizers the plugin registers, by name."""
    from plugins.nf4.quantizers import builtin_quantizers

    return {q.name: q for q in builtin_quantizers()}


@pytest.fixture(scope="session")
def nf4_model(quantizers, embedded_base: Path):
    """The embedded base loaded with the default nf4 quantizer (never run: stays saveable)."""
    return quantizers["nf4"].load(embedded_base)


@pytest.fixture(scope="session")
def nf4_checkpoint(quantizers, nf4_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pre-quantized nf4 checkpoint of the embedded base."""
    out = tmp_path_factory.mktemp("nf4ckpt") / "ckpt"
    quantizers["nf4"].save(nf4_model, out, {})
    return out


def _tiny_llama(out: Path, **overrides) -> Path:
    """Save a tiny random Llama (bf16, safetensors, no tokenizer) with config ``overrides``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = dict(
        vocab_size=320,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{**config, **overrides})).to(torch.bfloat16)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def odd_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama whose MLP width (200) the bitsandbytes CPU 4-bit kernels cannot take."""
    return _tiny_llama(tmp_path_factory.mktemp("odd") / "model", intermediate_size=200)


@pytest.fixture(scope="session")
def linearless_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Llama with no decoder layers: its only linear layer is lm_head."""
    return _tiny_llama(tmp_path_factory.mktemp("nolinear") / "model", num_hidden_layers=0)


@pytest.fixture(scope="session")
def pickle_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama saved as pytorch_model.bin (a pickle of tensors) without safetensors."""
    import torch
    from safetensors.torch import load_file

    out = _tiny_llama(tmp_path_factory.mktemp("pickle") / "model")
    tensors = load_file(out / "model.safetensors")
    (out / "model.safetensors").unlink()
    torch.save(tensors, out / "pytorch_model.bin")  # writing a pickle; loading is what is guarded
    return out
