"""``qlora-hub quantize`` and ``qlora-hub bench quant`` through the real click commands."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from hub.cli import make_cli
from hub.errors import UnknownNameError, ValidationError
from hub.models import CHECKPOINT_MANIFEST


@pytest.fixture
def cli(hub_factory):
    import plugins.nf4

    return make_cli(hub_factory(plugins.nf4))


@pytest.fixture
def invoke(cli, hub_factory, qlora_home):
    import plugins.nf4

    hub = hub_factory(plugins.nf4)

    def run(*args):
        return CliRunner().invoke(cli, list(args), obj=hub)

    return run


def test_quantize_writes_a_checkpoint_and_summary(invoke, embedded_base, tmp_path):
    out = tmp_path / "ckpt"
    result = invoke("quantize", str(embedded_base), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert f"wrote nf4 checkpoint to {out}: 28 layers quantized, 1 kept (lm_head)" in result.output
    assert "quantized weights 4.127 bits/param" in result.output
    assert json.loads((out / CHECKPOINT_MANIFEST).read_text())["created_by"] == "qlora-hub quantize"


def test_quantize_no_double_quant_is_recorded(invoke, embedded_base, tmp_path):
    out = tmp_path / "ckpt"
    result = invoke(
        "quantize", str(embedded_base), "--out", str(out), "--no-double-quant", "--json"
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{") :])
    assert data["manifest"]["options"]["double_quant"] is False
    assert data["footprint"]["quantized_bits_per_param"] == 4.5


def test_quantize_method_flag_picks_the_quantizer(invoke, embedded_base, tmp_path):
    out = tmp_path / "ckpt"
    result = invoke("quantize", str(embedded_base), "--out", str(out), "--method", "int8")
    assert result.exit_code == 0, result.output
    assert json.loads((out / CHECKPOINT_MANIFEST).read_text())["method"] == "int8"


def test_quantize_refuses_non_empty_out_before_loading(invoke, embedded_base, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = invoke("quantize", str(embedded_base), "--out", str(out))
    assert isinstance(result.exception, ValidationError)
    assert str(result.exception) == (
        f"output directory {out} is not empty: choose a new or empty --out (nothing was written)"
    )
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_quantize_unknown_method_lists_known_ones(invoke, embedded_base, tmp_path):
    result = invoke("quantize", str(embedded_base), "--out", str(tmp_path / "o"), "--method", "q4")
    assert isinstance(result.exception, UnknownNameError)
    assert (
        str(result.exception) == "unknown quantizer 'q4': known quantizers are fp4, int8, nf4, none"
    )


def test_quantize_needs_out_or_report(invoke, embedded_base):
    result = invoke("quantize", str(embedded_base))
    assert str(result.exception) == "give exactly one of --out DIR (write a checkpoint) or --report"


def test_quantize_pickle_model_needs_allow_pickle(invoke, pickle_llama, tmp_path):
    refused = invoke("quantize", str(pickle_llama), "--out", str(tmp_path / "a"))
    assert "pass --allow-pickle" in str(refused.exception)
    allowed = invoke("quantize", str(pickle_llama), "--out", str(tmp_path / "b"), "--allow-pickle")
    assert allowed.exit_code == 0, allowed.output
    assert (tmp_path / "b" / "model.safetensors").is_file()


def test_quantize_report_json_has_layers_and_totals(invoke, embedded_base):
    result = invoke("quantize", str(embedded_base), "--report", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{") :])
    assert len(data["layers"]) == 28
    assert set(data["quantized_total"]) == {"params", "original_bytes", "nf4", "fp4", "int4_absmax"}


def test_cli_prints_one_line_error_and_exits_2(embedded_base, tmp_path, monkeypatch, capsys):
    import plugins.nf4
    from hub import cli as hub_cli
    from hub.plugins import Hub

    class OnlyNf4(Hub):  # the real CLI entry point, with just this plugin loaded
        def __init__(self, **kwargs):
            super().__init__(builtins=False, entry_points=False, extra=[("nf4", plugins.nf4)])

    monkeypatch.setattr(hub_cli, "Hub", OnlyNf4)
    (tmp_path / "x").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        hub_cli.main(["quantize", str(embedded_base), "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"error: output directory {tmp_path} is not empty: choose a new or empty --out "
        "(nothing was written)\n"
    )


def test_bench_quant_is_registered_under_bench(cli):
    assert "quant" in cli.commands["bench"].commands


def test_quantize_report_no_double_quant_shows_4_5_bits(invoke, embedded_base):
    result = invoke("quantize", str(embedded_base), "--report", "--json", "--no-double-quant")
    data = json.loads(result.output[result.output.index("{") :])
    assert data["double_quant"] is False
    assert data["quantized_total"]["nf4"]["bits_per_param"] == 4.5
