"""``qlora-hub train --init-adapter``: a run starts from a stored adapter and records it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from hub.cli import make_cli
from hub.plugins import Hub

pytestmark = pytest.mark.slow  # three short training runs (~40 s on 2 cores)

TINY = ["--batch-size", "4", "--max-length", "32", "--eval-fraction", "0", "--quiet"]
TINY += ["--r", "4", "--alpha", "8", "--target-modules", "q_proj,v_proj", "--freeze-a"]


def run_cli(home: Path, args: list[str]) -> object:
    hub = Hub()
    return CliRunner().invoke(make_cli(hub), ["--home", str(home), *args], obj=hub)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from plugins.trainer.synth import synthesize

    return synthesize("upper", 64, tmp_path_factory.mktemp("data"), held_out=0)["train"]


@pytest.fixture(scope="module")
def start(tmp_path_factory: pytest.TempPathFactory, embedded_base: Path, data: Path) -> dict:
    """A stored adapter ``shout@1`` and a directory whose A and B were changed by hand."""
    import torch
    from safetensors.torch import load_file, save_file

    home = tmp_path_factory.mktemp("home")
    args = ["train", "--base", str(embedded_base), "--data", str(data), "--adapter", "shout"]
    args += ["--storage", "local", "--team", "alpha", "--max-steps", "2", *TINY]
    result = run_cli(home, args)
    assert result.exit_code == 0, result.output
    adapter = home / "runs" / "shout" / "adapter"
    tensors = load_file(adapter / "adapter_model.safetensors")
    edited = {k: (v + 0.05 if "lora_B" in k else v * 2) for k, v in tensors.items()}
    out = home / "edited"
    out.mkdir()
    (out / "adapter_config.json").write_bytes((adapter / "adapter_config.json").read_bytes())
    save_file(edited, out / "adapter_model.safetensors")
    return {"home": home, "edited": out, "tensors": edited, "dtype": torch.float32}


def train_from(start: dict, embedded_base: Path, data: Path, init: str, *extra: str) -> object:
    args = ["train", "--base", str(embedded_base), "--data", str(data), "--adapter", "next"]
    args += ["--storage", "local", "--team", "alpha", "--max-steps", "2", "--lr", "1e-5"]
    return run_cli(start["home"], [*args, *TINY, "--init-adapter", init, *extra])


def test_run_starts_from_the_init_adapter_and_keeps_its_frozen_a(
    start: dict, embedded_base: Path, data: Path
) -> None:
    import torch
    from safetensors.torch import load_file

    result = train_from(start, embedded_base, data, str(start["edited"]))
    assert result.exit_code == 0, result.output
    run = start["home"] / "runs" / "next"
    got = load_file(run / "adapter" / "adapter_model.safetensors")
    for name, init in start["tensors"].items():
        if "lora_A" in name:  # loaded, and frozen: byte for byte
            assert torch.equal(got[name], init), name
        else:  # loaded, then moved by two steps at lr 1e-5
            assert (got[name] - init).abs().max() < 1e-3, name
            assert got[name].mean() > 0.045  # the +0.05 edit was loaded (fresh B is ~1e-4)
    weights = (start["edited"] / "adapter_model.safetensors").read_bytes()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["init_adapter"] == {
        "ref": "edited",
        "sha256": hashlib.sha256(weights).hexdigest(),
    }


def test_init_adapter_by_name_from_storage_is_recorded_by_ref(
    start: dict, embedded_base: Path, data: Path
) -> None:
    result = train_from(start, embedded_base, data, "shout@1")
    assert result.exit_code == 0, result.output
    runs = sorted((start["home"] / "runs").glob("next*"), key=lambda p: p.stat().st_mtime)
    manifest = json.loads((runs[-1] / "manifest.json").read_text())
    assert manifest["init_adapter"]["ref"] == "shout@1"


def test_init_adapter_of_another_rank_is_a_one_line_error(
    start: dict, embedded_base: Path, data: Path
) -> None:
    result = train_from(start, embedded_base, data, str(start["edited"]), "--r", "8")
    assert str(result.exception) == (
        "--init-adapter edited does not match this run (r 4 vs 8; lora_alpha 8 vs 8"
        "): train with the adapter's --r, --alpha and --use-rslora"
    ).replace("; lora_alpha 8 vs 8", "")
