"""The four bitsandbytes quantizers: layer types, options, skipped layers, footprint."""

from __future__ import annotations

import warnings

import pytest

from hub.errors import ValidationError
from plugins.nf4.footprint import nf4_limit_bits
from plugins.nf4.quantizers import SkippedLayersWarning

UP = "model.layers.0.mlp.up_proj"


def _module(model, name):
    return model.get_submodule(name)


def test_plugin_registers_the_four_quantizers(hub_factory):
    import plugins.nf4

    hub = hub_factory(plugins.nf4)
    assert list(hub.quantizers) == ["fp4", "int8", "nf4", "none"]


def test_nf4_uses_nf4_codes_with_double_quant_and_bf16_compute(nf4_model):
    import bitsandbytes as bnb
    import torch

    layer = _module(nf4_model, UP)
    assert isinstance(layer, bnb.nn.Linear4bit)
    assert layer.weight.quant_state.quant_type == "nf4"
    assert layer.weight.quant_state.nested is True
    assert layer.compute_dtype == torch.bfloat16


def test_lm_head_stays_unquantized_bf16(nf4_model):
    import torch

    assert type(nf4_model.lm_head) is torch.nn.Linear
    assert nf4_model.lm_head.weight.dtype == torch.bfloat16


def test_fp4_uses_fp4_codes(quantizers, embedded_base):
    model = quantizers["fp4"].load(embedded_base)
    assert _module(model, UP).weight.quant_state.quant_type == "fp4"


def test_int8_uses_llm_int8_layers(quantizers, embedded_base):
    import bitsandbytes as bnb
    import torch

    layer = _module(quantizers["int8"].load(embedded_base), UP)
    assert isinstance(layer, bnb.nn.Linear8bitLt)
    assert layer.weight.dtype == torch.int8


def test_none_keeps_bf16_linear_layers(quantizers, embedded_base):
    import torch

    layer = _module(quantizers["none"].load(embedded_base), UP)
    assert type(layer) is torch.nn.Linear and layer.weight.dtype == torch.bfloat16


def test_no_double_quant_keeps_fp32_absmax(quantizers, embedded_base):
    import torch

    model = quantizers["nf4"].load(embedded_base, {"double_quant": False})
    state = _module(model, UP).weight.quant_state
    assert state.nested is False and state.absmax.dtype == torch.float32


def test_quant_storage_bfloat16_stores_packed_weights_as_bf16(quantizers, embedded_base):
    import torch

    model = quantizers["nf4"].load(embedded_base, {"quant_storage": "bfloat16"})
    assert _module(model, UP).weight.dtype == torch.bfloat16


def test_skip_modules_keeps_named_layers_in_full_precision(quantizers, embedded_base):
    import torch

    model = quantizers["nf4"].load(embedded_base, {"skip_modules": ["down_proj"]})
    assert type(_module(model, "model.layers.2.mlp.down_proj")) is torch.nn.Linear
    assert "model.layers.2.mlp.down_proj" in model.qlora_hub_quant["kept_modules"]


def test_layers_the_cpu_kernels_cannot_take_are_skipped_with_a_warning(quantizers, odd_llama):
    with pytest.warns(SkippedLayersWarning) as caught:
        model = quantizers["nf4"].load(odd_llama)
    message = str(caught[0].message)
    assert "model.layers.0.mlp.up_proj (out_features 200 is not a multiple of 32)" in message
    assert "model.layers.0.mlp.down_proj (in_features 200 is not a multiple of 64)" in message
    assert sorted(model.qlora_hub_quant["unsupported_modules"]) == [
        "model.layers.0.mlp.down_proj",
        "model.layers.0.mlp.gate_proj",
        "model.layers.0.mlp.up_proj",
    ]


def test_model_with_skipped_layers_runs_a_cpu_forward_pass(quantizers, odd_llama):
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedLayersWarning)
        model = quantizers["nf4"].load(odd_llama)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 320) and logits.isfinite().all()


def test_embedded_base_has_no_skipped_layers(nf4_model):
    assert nf4_model.qlora_hub_quant["unsupported_modules"] == {}
    assert len(nf4_model.qlora_hub_quant["quantized_modules"]) == 28


def test_nf4_footprint_is_the_double_quant_format_limit(quantizers, nf4_model):
    fp = quantizers["nf4"].footprint(nf4_model)
    assert fp["quantized_parameters"] == 3_407_872
    # 28 layers: codes + 8-bit absmax + fp32 nested absmax per 256 blocks + fp32 offset
    assert fp["quantized_bytes"] == 3_407_872 // 2 + 3_407_872 // 64 + 208 * 4 + 28 * 4
    assert fp["quantized_bits_per_param"] == pytest.approx(nf4_limit_bits(True), rel=5e-3)


def test_footprint_without_double_quant_is_4_5_bits(quantizers, embedded_base):
    model = quantizers["nf4"].load(embedded_base, {"double_quant": False})
    fp = quantizers["nf4"].footprint(model)
    assert fp["quantized_bits_per_param"] == 4.5


def test_whole_model_footprint_counts_unquantized_embeddings(quantizers, nf4_model):
    fp = quantizers["nf4"].footprint(nf4_model)
    assert fp["parameters"] == 3_574_016
    assert fp["bits_per_param"] > fp["quantized_bits_per_param"]


def test_unknown_option_is_refused_listing_known_ones(quantizers, embedded_base):
    with pytest.raises(ValidationError) as err:
        quantizers["int8"].load(embedded_base, {"double_quant": False})
    assert str(err.value) == (
        "quantizer 'int8': unknown option 'double_quant' "
        "(known: compute_dtype, skip_modules, allow_pickle)"
    )


def test_every_bad_option_is_reported_at_once(quantizers, embedded_base):
    with pytest.raises(ValidationError) as err:
        quantizers["nf4"].load(embedded_base, {"compute_dtype": "int4", "double_quant": "yes"})
    assert str(err.value) == (
        "quantizer 'nf4': double_quant must be true or false, got 'yes'; "
        "compute_dtype must be one of bfloat16, float16, float32"
    )
