"""``train``, ``eval``, ``merge`` and ``quantize`` with ``--device`` (setting ``hub.device``).

This machine has no GPU: the CPU runs end to end with an explicit ``--device cpu``,
and CUDA or a malformed value is refused in one line before anything is read or written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hub.testing import run_cli

NO_CUDA = "no CUDA device is visible (torch.cuda.is_available() is False); use --device cpu"
TINY = ["--max-steps", "2", "--batch-size", "4", "--max-length", "32", "--eval-fraction", "0",
        "--quiet", "--no-store"]  # fmt: skip
cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusals")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    from plugins.trainer.synth import synthesize

    return synthesize("upper", 64, tmp_path_factory.mktemp("data"), held_out=8)


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory, embedded_base: Path, data) -> tuple[Path, object]:
    home = tmp_path_factory.mktemp("home")
    result = run_cli(
        "--home", str(home), "train", "--base", str(embedded_base), "--data", str(data["train"]),
        "--adapter", "dev", "--device", "cpu", *TINY,
    )  # fmt: skip
    assert result.exit_code == 0, result.err
    return home / "runs" / "dev", result


def test_train_with_device_cpu_records_the_device_and_its_peak_against_the_estimate(cpu_run):
    run, result = cpu_run
    memory = json.loads((run / "manifest.json").read_text())["memory"]
    assert (memory["device"], memory["peak_kind"]) == ("cpu", "rss")
    estimate = memory["estimate"]
    parts = ("weights_4bit_bytes", "other_base_bytes", "lora_bytes", "optimizer_bytes")
    assert estimate["total_bytes"] == sum(estimate[k] for k in (*parts, "activation_bytes"))
    assert (
        estimate["weights_4bit_bytes"]
        == memory["packed_weight_bytes"] + memory["quant_state_bytes"]
    )
    assert estimate["optimizer_bytes"] == 8 * memory["trainable_params"]  # two fp32 moments
    assert estimate["peak_over_estimate"] == round(
        memory["peak_bytes"] / estimate["total_bytes"], 3
    )
    assert "  peak (peak RSS, cpu) " in result.out


def test_eval_with_device_cpu_reports_the_device(cpu_run, embedded_base, data):
    run, _ = cpu_run
    result = run_cli(
        "eval", str(run / "adapter"), "--base", str(embedded_base), "--data", str(data["held_out"]),
        "--device", "cpu", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.err
    report = json.loads(result.out)
    assert (report["device"], report["total"]) == ("cpu", 8)


@cpu_only
@pytest.mark.parametrize("value", ["cuda", "cuda:1"])
def test_train_on_cuda_without_a_gpu_is_refused_before_any_run_directory(
    tmp_path, embedded_base, data, value
):
    result = run_cli(
        "--home", str(tmp_path), "train", "--base", str(embedded_base), "--data",
        str(data["train"]), "--adapter", "dev", "--device", value, *TINY,
    )  # fmt: skip
    assert (result.exit_code, result.err) == (2, f"error: --device {value}: {NO_CUDA}\n")
    assert not (tmp_path / "runs").exists()


@cpu_only
def test_the_setting_is_the_default_and_the_flag_overrides_it(
    tmp_path, embedded_base, data, monkeypatch
):
    monkeypatch.setenv("QLORA_HUB_DEVICE", "gpu")
    args = ["--home", str(tmp_path), "train", "--base", str(embedded_base), "--data",
            str(data["train"]), "--adapter", "dev", *TINY]  # fmt: skip
    result = run_cli(*args)
    assert (result.exit_code, result.err) == (
        2,
        "error: --device gpu: not a device; use auto, cpu, cuda or cuda:N\n",
    )
    (tmp_path / "qlora-hub.toml").write_text('[hub]\ndevice = "cuda"\n')
    monkeypatch.delenv("QLORA_HUB_DEVICE")
    assert run_cli(*args).err == f"error: --device cuda: {NO_CUDA}\n"


@cpu_only
@pytest.mark.parametrize("command", ["eval", "merge", "quantize"])
def test_eval_merge_and_quantize_refuse_cuda_without_a_gpu(
    command, cpu_run, embedded_base, data, tmp_path
):
    run, _ = cpu_run
    args = {
        "eval": ["eval", str(run / "adapter"), "--data", str(data["held_out"])],
        "merge": ["merge", str(run / "adapter"), "--out", str(tmp_path / "merged")],
        "quantize": ["quantize", str(embedded_base), "--out", str(tmp_path / "q")],
    }[command]
    result = run_cli("--home", str(tmp_path), *args, "--device", "cuda:0")
    assert (result.exit_code, result.err) == (2, f"error: --device cuda:0: {NO_CUDA}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_merge_with_device_cpu_writes_a_standalone_model(cpu_run, embedded_base, tmp_path):
    run, _ = cpu_run
    out = tmp_path / "merged"
    result = run_cli(
        "--home", str(tmp_path), "merge", str(run / "adapter"), "--base", str(embedded_base),
        "--out", str(out), "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.err
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert "max |logit difference| merged vs base+adapter" in result.out
