"""``merge`` on architectures other than Llama, and merges that fail (tiny random models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hub.errors import ValidationError
from hub.types import AdapterPayload
from tests.server.test_architectures import lora_payload, tiny_models


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, embedded_base: Path):
    return tiny_models(tmp_path_factory.mktemp("tiny"), embedded_base)


@pytest.fixture(scope="module")
def hub():
    from hub.plugins import Hub

    return Hub()


def test_merge_writes_gpt2_conv1d_weights_the_way_gpt2_loads_them(hub, tiny, tmp_path) -> None:
    """Dequantizing turns GPT-2's Conv1D into nn.Linear; the merge saves them as Conv1D again."""
    from transformers import AutoModelForCausalLM

    from plugins.trainer.merge import merge_adapter

    base = tiny("gpt2")
    payload = lora_payload(hub.quantizers["nf4"].load(base), "g", seed=6)
    report = merge_adapter(hub, str(base), payload, tmp_path / "merged")
    assert report["max_abs_diff"] < 0.1 * report["logit_scale"]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    layer = merged.transformer.h[0]
    assert type(layer.attn.c_attn).__name__ == "Conv1D"
    assert tuple(layer.attn.c_attn.weight.shape) == (64, 192)
    assert tuple(layer.mlp.c_fc.weight.shape) == (64, 256)
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]


def test_a_merge_that_fails_leaves_nothing_behind(hub, tiny, tmp_path) -> None:
    """Finite weights whose scaled product overflows when folded in: refused, nothing left."""
    from safetensors.torch import load, save

    base = tiny("llama")
    payload = lora_payload(hub.quantizers["nf4"].load(base), "huge", seed=7)
    tensors = load(payload.files[AdapterPayload.WEIGHTS])
    tensors = {k: (v * 1e4 if "lora_B" in k else v) for k, v in tensors.items()}
    config = {**payload.config(), "lora_alpha": 1e36}
    files = {
        AdapterPayload.CONFIG: json.dumps(config).encode(),
        AdapterPayload.WEIGHTS: save(tensors),
    }
    payload = AdapterPayload(name="huge", files=files)
    from plugins.trainer.merge import merge_adapter

    with pytest.raises(ValidationError) as err:
        merge_adapter(hub, str(base), payload, tmp_path / "merged")
    assert str(err.value).startswith("merging huge gives a model that does not reproduce base")
    assert str(err.value).endswith("nothing was written")
    assert list(tmp_path.iterdir()) == []
