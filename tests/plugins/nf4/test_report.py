"""The footprint and error report: real bitsandbytes figures, int4 absmax reference, rendering."""

from __future__ import annotations

import json

import pytest

from plugins.nf4.reconstruction import bnb_roundtrip, error_sums, int4_absmax_roundtrip
from plugins.nf4.report import build_report, print_report

Q_PROJ = "model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def report(embedded_base):
    return build_report(str(embedded_base))


def _row(report, name):
    return next(r for r in report["layers"] if r["name"] == name)


def test_report_has_one_row_per_quantized_layer(report):
    assert len(report["layers"]) == 28
    assert _row(report, Q_PROJ)["shape"] == [256, 256]
    assert report["skipped"] == {"lm_head": "kept in full precision"}


def test_layer_bytes_are_codes_plus_double_quantized_scales(report):
    # 65536 weights: 32768 B codes + 1024 8-bit absmax + 4 fp32 nested absmax + fp32 offset
    assert _row(report, Q_PROJ)["nf4"]["bytes"] == 32768 + 1024 + 4 * 4 + 4
    assert _row(report, Q_PROJ)["int4_absmax"]["bytes"] == 32768 + 1024 * 4


def test_quantized_bits_per_param_is_within_half_a_percent_of_the_format_limit(report):
    total = report["quantized_total"]["nf4"]["bits_per_param"]
    assert total == pytest.approx(4 + 8 / 64 + 32 / (64 * 256), rel=5e-3)


def test_without_double_quant_a_layer_costs_4_5_bits(embedded_base):
    import torch

    weight = torch.randn(256, 256, dtype=torch.bfloat16)
    _, nbytes = bnb_roundtrip(weight, "nf4", double_quant=False)
    assert 8 * nbytes / weight.numel() == 4.5


def test_whole_model_bits_include_bf16_embeddings_and_lm_head(report):
    whole = report["model_total"]
    assert whole["params"] == 3_574_016
    assert whole["nf4"]["bytes"] == report["quantized_total"]["nf4"][
        "bytes"
    ] + 2 * 320 * 256 * 2 + (9 * 256 * 2)


def test_nf4_error_is_below_fp4_and_int4_on_base_weights(report):
    total = report["quantized_total"]
    assert total["nf4"]["rel_mse"] < total["int4_absmax"]["rel_mse"] < total["fp4"]["rel_mse"]


def test_nf4_error_is_below_fp4_and_int4_on_gaussian_weights(report):
    g = report["gaussian"]
    assert g["nf4"]["rel_mse"] < g["fp4"]["rel_mse"]
    assert g["nf4"]["rel_mse"] < g["int4_absmax"]["rel_mse"]


def test_report_error_equals_the_loaded_nf4_layer_error(report, nf4_model, embedded_base):
    import bitsandbytes.functional as F
    from safetensors.torch import load_file

    original = load_file(embedded_base / "model.safetensors")[f"{Q_PROJ}.weight"]
    weight = nf4_model.get_submodule(Q_PROJ).weight
    restored = F.dequantize_4bit(weight.data, weight.quant_state)
    sums = error_sums(original, restored)
    assert _row(report, Q_PROJ)["nf4"]["rel_mse"] == pytest.approx(sums["sq_err"] / sums["sq_norm"])
    assert _row(report, Q_PROJ)["nf4"]["max_abs"] == sums["max_abs"]


def test_int4_absmax_round_trip_known_values():
    import torch

    block = torch.zeros(64)
    block[:4] = torch.tensor([7.0, -3.5, 1.2, 0.4])  # absmax 7 -> scale 1
    restored, nbytes = int4_absmax_roundtrip(block)
    assert restored[:4].tolist() == [7.0, -4.0, 1.0, 0.0]  # round half to even: -3.5 -> -4
    assert nbytes == 32 + 4


def test_error_sums_known_values():
    import torch

    sums = error_sums(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 3.0]))
    assert sums == {"sq_err": 1.0, "sq_norm": 25.0, "max_abs": 1.0}


def test_report_is_json_serialisable(report):
    assert json.loads(json.dumps(report))["quantized_total"]["params"] == 3_407_872


def test_printed_report_shows_totals_and_footprint(report):
    from rich.console import Console

    console = Console(record=True, width=200)
    print_report(report, console)
    text = console.export_text()
    assert "all quantized" in text and "gaussian ref." in text
    nf4_line = next(line for line in text.splitlines() if line.startswith("│ nf4 "))
    assert [c.strip() for c in nf4_line.split("│")[1:6]] == [
        "nf4", "1,758,128", "4.127", "2,090,416", "4.679",
    ]  # fmt: skip
    assert "format limit 4.1270 bits/param; not quantized: lm_head" in text
