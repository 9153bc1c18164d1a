"""Bad sources: each refused with one clear line."""

from __future__ import annotations

import pytest

from hub.base import fingerprint
from hub.errors import UnknownNameError, ValidationError


def test_empty_directory_is_not_a_model(quantizers, tmp_path):
    with pytest.raises(ValidationError) as err:
        quantizers["nf4"].load(tmp_path)
    assert str(err.value) == (
        f"{tmp_path} is not a model: config.json is missing; pass a Hugging Face model directory"
    )


def test_missing_path_is_refused(quantizers, tmp_path):
    with pytest.raises(ValidationError) as err:
        quantizers["nf4"].load(tmp_path / "nope")
    assert str(err.value) == f"{tmp_path / 'nope'} does not exist: pass a model directory or hub id"


def test_file_is_not_a_model(quantizers, embedded_base):
    with pytest.raises(ValidationError, match="is a file, not a model"):
        quantizers["nf4"].load(embedded_base / "config.json")


def test_config_without_weights_is_refused(quantizers, embedded_base, tmp_path):
    (tmp_path / "config.json").write_bytes((embedded_base / "config.json").read_bytes())
    with pytest.raises(ValidationError, match=r"has config.json but no \*.safetensors weights"):
        quantizers["nf4"].load(tmp_path)


def test_config_of_a_non_causal_model_is_refused(quantizers, tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "no-such-arch"}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValidationError, match="is not a causal language model"):
        quantizers["nf4"].load(tmp_path)


def test_model_with_no_linear_layers_is_refused(quantizers, linearless_llama):
    with pytest.raises(ValidationError) as err:
        quantizers["nf4"].load(linearless_llama)
    assert str(err.value) == (
        f"{linearless_llama} has no linear layers left to quantize (besides lm_head): "
        "use a transformer causal LM, or skip fewer modules"
    )


def test_pickle_only_model_is_refused_without_allow_pickle(quantizers, pickle_llama):
    with pytest.raises(ValidationError) as err:
        quantizers["nf4"].load(pickle_llama)
    assert str(err.value) == (
        f"{pickle_llama} has only pickle weights (pytorch_model.bin) and no safetensors: "
        "convert it to safetensors, or pass --allow-pickle to load it with torch weights_only=True"
    )


def test_pickle_only_model_loads_with_allow_pickle(quantizers, pickle_llama):
    import bitsandbytes as bnb

    model = quantizers["nf4"].load(pickle_llama, {"allow_pickle": True})
    assert isinstance(model.get_submodule("model.layers.0.mlp.up_proj"), bnb.nn.Linear4bit)


def test_pickle_weights_are_part_of_the_fingerprint(quantizers, pickle_llama):
    model = quantizers["nf4"].load(pickle_llama, {"allow_pickle": True})
    assert model.qlora_hub_quant["base_fingerprint"] != fingerprint(pickle_llama)


def test_unknown_method_lists_known_ones(hub_factory):
    import plugins.nf4

    hub = hub_factory(plugins.nf4)
    with pytest.raises(UnknownNameError) as err:
        hub.quantizers["nf3"]
    assert str(err.value) == "unknown quantizer 'nf3': known quantizers are fp4, int8, nf4, none"


def test_unknown_hub_id_is_refused(quantizers):
    with pytest.raises(ValidationError) as err:
        quantizers["nf4"].load("nobody-qlora-hub/no-such-model")
    assert str(err.value).startswith(
        "nobody-qlora-hub/no-such-model is neither a local model directory nor a reachable "
        "Hugging Face model ("
    )
