"""Adapters trained here load in plain PEFT, evaluate through the CLI, and merge losslessly."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import plugins.lora
import plugins.nf4
from hub.cli import make_cli
from hub.models import load_base
from hub.plugins import Hub
from hub.types import AdapterPayload

INPUTS = ["hello:", "qlorahub:", "abc:"]


@pytest.fixture(scope="module")
def hub() -> Hub:
    return Hub(
        builtins=False, entry_points=False, extra=[("nf4", plugins.nf4), ("lora", plugins.lora)]
    )


def _logits(model, tokenizer) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(**tokenizer(t, return_tensors="pt")).logits for t in INPUTS]


def test_plain_peft_from_pretrained_gives_the_hubs_logits(hub, embedded_base, trained_adapters):
    from peft import PeftModel

    adapter_dir = trained_adapters["upper"]
    ours = load_base(hub, embedded_base)
    ours_model = hub.adapters["lora"].load(
        ours.model, AdapterPayload.from_dir(adapter_dir, "upper"), "upper"
    )
    theirs = load_base(hub, embedded_base)
    peft_model = PeftModel.from_pretrained(theirs.model, str(adapter_dir))
    peft_model.eval()
    for a, b in zip(
        _logits(ours_model, ours.tokenizer), _logits(peft_model, theirs.tokenizer), strict=True
    ):
        assert torch.equal(a, b)


def test_the_adapter_changes_the_base_logits(hub, embedded_base, trained_adapters) -> None:
    base = load_base(hub, embedded_base)
    plain = _logits(base.model, base.tokenizer)
    model = hub.adapters["lora"].load(
        load_base(hub, embedded_base).model,
        AdapterPayload.from_dir(trained_adapters["upper"], "upper"),
        "upper",
    )
    assert not torch.equal(plain[0], _logits(model, base.tokenizer)[0])


def test_eval_command_reports_exact_match(
    embedded_base, trained_adapters, synthetic_data, tmp_path
) -> None:
    h = Hub()
    result = CliRunner().invoke(
        make_cli(h),
        [
            "--home",
            str(tmp_path),
            "eval",
            str(trained_adapters["upper"].parent),
            "--data",
            str(synthetic_data["upper"]["held_out"]),
            "--json",
        ],
        obj=h,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # warnings go to stderr
    assert report["total"] == 200 and report["accuracy"] >= 0.95


def test_merge_writes_a_standalone_bf16_model_with_matching_logits(
    embedded_base, trained_adapters, tmp_path
) -> None:
    from transformers import AutoModelForCausalLM

    h = Hub()
    out = tmp_path / "merged"
    result = CliRunner().invoke(
        make_cli(h),
        [
            "--home",
            str(tmp_path),
            "merge",
            str(trained_adapters["reverse"].parent),
            "--out",
            str(out),
        ],
        obj=h,
    )
    assert result.exit_code == 0, result.output
    assert "max |logit difference| merged vs base+adapter" in result.output
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in n for n, _ in model.named_parameters())
    diff = float(result.output.split("samples: ")[1].split(" ")[0])
    scale = float(result.output.split("logit scale ")[1].split(")")[0])
    # bf16 rounding of W + BA (one weight) vs W and BA applied apart; measured 0.27 on 5.5
    assert diff < 0.1 * scale


def test_merge_refuses_a_non_empty_output(embedded_base, trained_adapters, tmp_path) -> None:
    from plugins.trainer.merge import merge_adapter

    out = tmp_path / "taken"
    out.mkdir()
    (out / "x").write_text("keep")
    payload = AdapterPayload.from_dir(trained_adapters["upper"], "upper")
    with pytest.raises(Exception) as err:
        merge_adapter(Hub(), str(embedded_base), payload, out)
    assert str(err.value) == f"{out} is not empty: choose a new output directory"
    assert (out / "x").read_text() == "keep"
