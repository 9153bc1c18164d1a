"""``qlora-hub train`` end to end on the embedded base with a few steps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from hub import hookimpl
from hub.cli import make_cli
from hub.plugins import Hub
from plugins.trainer.train import TrainingInterrupted

TINY = [
    "--max-steps",
    "4",
    "--batch-size",
    "4",
    "--max-length",
    "32",
    "--logging-steps",
    "1",
    "--eval-fraction",
    "0.1",
    "--lr",
    "0.005",
    "--quiet",
]


class EventRecorder:
    """A plugin that keeps every training event (and can stop training like Ctrl-C would)."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.events: list[dict] = []
        self.interrupt_at = interrupt_at

    @hookimpl
    def training_event(self, event):
        self.events.append(dict(event))
        if self.interrupt_at is not None and event.get("step") == self.interrupt_at:
            raise KeyboardInterrupt


def run_cli(home: Path, args: list[str], *plugins) -> object:
    hub = Hub(extra=[(f"recorder{i}", p) for i, p in enumerate(plugins)])
    return CliRunner().invoke(make_cli(hub), ["--home", str(home), *args], obj=hub)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from plugins.trainer.synth import synthesize

    return synthesize("upper", 200, tmp_path_factory.mktemp("data"), held_out=10)["train"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, embedded_base: Path, data: Path):
    home = tmp_path_factory.mktemp("home")
    recorder = EventRecorder()
    args = [
        "train",
        "--base",
        str(embedded_base),
        "--data",
        str(data),
        "--adapter",
        "shout",
        "--storage",
        "local",
        "--team",
        "alpha",
        "--save-steps",
        "2",
        *TINY,
    ]
    result = run_cli(home, args, recorder)
    assert result.exit_code == 0, result.output
    return home, result, recorder


def test_run_directory_holds_adapter_manifest_metrics_and_loss_curve(first_run) -> None:
    home, _, _ = first_run
    run = home / "runs" / "shout"
    assert sorted(p.name for p in (run / "adapter").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    kinds = [json.loads(line)["kind"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert kinds == ["step"] * 4 + ["eval", "end"]


def test_manifest_records_base_data_config_versions_and_metrics(first_run, embedded_base, data):
    import hashlib

    from hub.base import fingerprint

    home, _, _ = first_run
    manifest = json.loads((home / "runs" / "shout" / "manifest.json").read_text())
    assert manifest["base_fingerprint"] == fingerprint(embedded_base)
    assert manifest["data"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert (manifest["data"]["train_rows"], manifest["data"]["eval_rows"]) == (180, 20)
    assert manifest["config"]["r"] == 16 and manifest["config"]["max_steps"] == 4
    assert set(manifest["versions"]) >= {"torch", "transformers", "peft", "bitsandbytes"}
    assert manifest["metrics"]["steps"] == 4 and manifest["metrics"]["eval_loss"] > 0


def test_training_prints_memory_account_and_the_optimizer_that_ran(first_run) -> None:
    _, result, _ = first_run
    assert "memory account (measured vs 0.52p + 24krd):" in result.output
    assert (
        "optimizer: requested paged_adamw_32bit, ran adamw_32bit (bitsandbytes cannot page "
        "on cpu: fell back to non-paged state)"
    ) in result.output


def test_adapter_is_pushed_to_the_local_store(first_run) -> None:
    home, result, _ = first_run
    assert "stored as shout@1 (team alpha)" in result.output
    assert (home / "storage" / "local" / "shout" / "1" / "adapter_model.safetensors").is_file()


def test_training_event_hook_gets_steps_and_end(first_run) -> None:
    _, _, recorder = first_run
    assert [e["kind"] for e in recorder.events] == ["step"] * 4 + ["eval", "end"]
    assert [e["step"] for e in recorder.events[:4]] == [1, 2, 3, 4]
    assert all(e["loss"] > 0 and e["learning_rate"] >= 0 for e in recorder.events[:4])


def test_checkpoints_hold_no_pickle(first_run) -> None:
    home, _, _ = first_run
    ckpt = home / "runs" / "shout" / "checkpoints" / "checkpoint-2"
    names = {p.name for p in ckpt.iterdir()}
    assert {
        "optimizer.safetensors",
        "optimizer.json",
        "scheduler.json",
        "rng_state.safetensors",
    } <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth"))]


def test_same_adapter_name_becomes_a_new_run_and_version(first_run, embedded_base, data) -> None:
    home, _, _ = first_run
    before = (home / "runs" / "shout" / "manifest.json").read_bytes()
    args = [
        "train",
        "--base",
        str(embedded_base),
        "--data",
        str(data),
        "--adapter",
        "shout",
        "--storage",
        "local",
        "--team",
        "alpha",
        *TINY,
    ]
    result = run_cli(home, args)
    assert result.exit_code == 0, result.output
    assert "stored as shout@2 (team alpha)" in result.output
    assert f"run directory: {home / 'runs' / 'shout-2'}" in result.output
    assert (home / "runs" / "shout" / "manifest.json").read_bytes() == before


def test_resume_with_a_different_rank_is_refused(first_run, embedded_base, data) -> None:
    home, _, _ = first_run
    args = [
        "train",
        "--base",
        str(embedded_base),
        "--data",
        str(data),
        "--adapter",
        "shout",
        "--resume",
        "--no-store",
        *TINY,
        "--r",
        "8",
    ]
    result = run_cli(home, args)
    assert str(result.exception) == (
        "cannot resume: the checkpoint was trained with a different r (16 vs 8); "
        "start a new run without --resume"
    )


def test_ctrl_c_saves_a_checkpoint_that_resume_finishes(tmp_path, embedded_base, data) -> None:
    args = [
        "train",
        "--base",
        str(embedded_base),
        "--data",
        str(data),
        "--adapter",
        "stop",
        "--no-store",
        *TINY,
    ]
    result = run_cli(tmp_path, args, EventRecorder(interrupt_at=2))
    run = tmp_path / "runs" / "stop"
    assert isinstance(result.exception, TrainingInterrupted)
    assert str(result.exception) == (
        f"interrupted at step 2: checkpoint saved to {run / 'checkpoints' / 'checkpoint-2'}; "
        "continue with --resume"
    )
    assert not (run / "adapter").exists()
    recorder = EventRecorder()
    resumed = run_cli(tmp_path, [*args, "--resume"], recorder)
    assert resumed.exit_code == 0, resumed.output
    assert [e["step"] for e in recorder.events if e["kind"] == "step"] == [3, 4]
    assert json.loads((run / "manifest.json").read_text())["metrics"]["steps"] == 4


def test_unknown_target_module_is_a_one_line_cli_error(tmp_path, embedded_base, data) -> None:
    args = [
        "train",
        "--base",
        str(embedded_base),
        "--data",
        str(data),
        "--adapter",
        "x",
        "--no-store",
        *TINY,
        "--target-modules",
        "q_proj,attn",
    ]
    result = run_cli(tmp_path, args)
    assert str(result.exception) == (
        "unknown target modules attn: this model's linear modules are down_proj, gate_proj, "
        "k_proj, o_proj, q_proj, up_proj, v_proj (or use all-linear)"
    )


def test_cli_rank_zero_exits_2_with_one_line(tmp_path, embedded_base, data) -> None:
    cmd = [
        sys.executable,
        "-m",
        "hub",
        "--home",
        str(tmp_path),
        "train",
        "--base",
        str(embedded_base),
        "--data",
        str(data),
        "--adapter",
        "x",
        "--r",
        "0",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == "error: invalid training options: r must be > 0, got 0\n"
