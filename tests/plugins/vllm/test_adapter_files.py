"""Adapters on their way into vLLM (RAM-backed private copies, refusals) and the engine's
settings and start-up errors: none of it needs vLLM itself."""

from __future__ import annotations

import importlib.util
import stat
from pathlib import Path

import pytest
import torch

from hub.engines import AdapterRefused
from hub.errors import ConfigError
from hub.testing.engine import lora_config, lora_tensors
from plugins.vllm.adapter_files import base_shapes, check_adapter, filesystem_type, ram_copy
from plugins.vllm.loading import base_dir, check_settings, vllm_values

SHM = Path("/dev/shm")
needs_shm = pytest.mark.skipif(filesystem_type(SHM) != "tmpfs", reason="no tmpfs at /dev/shm")


@pytest.fixture
def ram_dir(tmp_path: Path):
    """A fresh directory under /dev/shm, removed afterwards."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="qlora-hub-test-", dir=SHM))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@needs_shm
def test_ram_copy_is_private_complete_and_gone_afterwards(embedded_base: Path, ram_dir: Path):
    from safetensors.torch import load_file

    tensors = lora_tensors(embedded_base, seed=1)
    with ram_copy(str(ram_dir), lora_config(), tensors) as path:
        assert path.parent == ram_dir
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
        files = sorted(p.name for p in path.iterdir())
        assert files == ["adapter_config.json", "adapter_model.safetensors"]
        for name in files:
            assert stat.S_IMODE((path / name).stat().st_mode) == 0o600
        back = load_file(str(path / "adapter_model.safetensors"))
        assert back.keys() == tensors.keys()
        assert all(torch.equal(back[k], tensors[k]) for k in tensors)
    assert list(ram_dir.iterdir()) == []


@needs_shm
def test_ram_copy_is_removed_when_loading_fails(embedded_base: Path, ram_dir: Path):
    tensors = lora_tensors(embedded_base, seed=1)
    with (
        pytest.raises(RuntimeError, match="vLLM refused"),
        ram_copy(str(ram_dir), lora_config(), tensors),
    ):
        raise RuntimeError("vLLM refused")
    assert list(ram_dir.iterdir()) == []


def test_ram_copy_refuses_a_directory_on_disk(embedded_base: Path, tmp_path: Path):
    assert filesystem_type(tmp_path) not in ("tmpfs", "ramfs")
    tensors = lora_tensors(embedded_base, seed=1)
    with (
        pytest.raises(AdapterRefused, match=r"\[vllm\] ram_dir .* not in RAM"),
        ram_copy(str(tmp_path), lora_config(), tensors),
    ):
        pass
    assert list(tmp_path.iterdir()) == []


def test_ram_copy_refuses_a_missing_directory(tmp_path: Path):
    with (
        pytest.raises(AdapterRefused, match=r"\[vllm\] ram_dir .* is not a directory"),
        ram_copy(str(tmp_path / "absent"), lora_config(), {}),
    ):
        pass


def test_rank_above_max_lora_rank_is_refused_naming_the_setting():
    with pytest.raises(AdapterRefused) as info:
        check_adapter(lora_config(r=32), max_lora_rank=16)
    assert str(info.value).startswith("LoRA rank 32 is above [vllm] max_lora_rank 16: raise it")


def test_rank_pattern_counts_for_the_rank():
    config = {**lora_config(r=8), "rank_pattern": {"q_proj": 64}}
    with pytest.raises(AdapterRefused, match="LoRA rank 64 is above"):
        check_adapter(config, max_lora_rank=16)
    check_adapter(config, max_lora_rank=64)  # fits: no error


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"use_dora": True}, "vLLM does not serve DoRA adapters"),
        ({"bias": "lora_only"}, "vLLM does not serve adapters with trained biases"),
        ({"modules_to_save": ["lm_head"]}, "vLLM serves LoRA weights only"),
    ],
)
def test_what_vllm_cannot_serve_is_refused(extra: dict, reason: str):
    with pytest.raises(AdapterRefused, match=reason):
        check_adapter({**lora_config(), **extra}, max_lora_rank=16)


def test_base_shapes_come_from_the_safetensors_headers(embedded_base: Path):
    shapes = base_shapes(embedded_base)
    assert shapes["model.layers.0.self_attn.q_proj"] == (256, 256)
    assert shapes["model.layers.3.mlp.down_proj"] == (768, 256)
    assert shapes["model.layers.3.mlp.up_proj"] == (256, 768)
    assert not any(name.endswith("norm") for name in shapes)  # 1-D weights are no targets


def test_engine_is_registered_with_its_settings_table(tmp_path: Path):
    from hub.config import load_settings
    from hub.plugins import Hub

    hub = Hub()
    assert "vllm" in hub.engines and hub.engines.owner("vllm") == "vllm"
    settings = load_settings(tmp_path, hub=hub)
    assert settings.get("vllm.max_lora_rank") == 16
    assert settings.get("vllm.ram_dir") == "/dev/shm"


def test_settings_without_the_plugin_table_fall_back_to_defaults(tmp_path: Path):
    from hub.config import load_settings

    values = vllm_values(load_settings(tmp_path))
    assert values["max_lora_rank"] == 16 and values["kv_cache_gib"] == 1.0


def test_bad_settings_are_one_line_naming_each_setting():
    values = {
        "max_lora_rank": 12,
        "max_loras": 4,
        "max_cpu_loras": 2,
        "gpu_memory_utilization": 1.5,
        "kv_cache_gib": 1.0,
    }
    with pytest.raises(ConfigError) as info:
        check_settings(values, max_resident=8)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("vllm.max_lora_rank 12 is not one of 1, 8, 16, 32, 64")
    assert (
        "vllm.max_cpu_loras 2 (0 means twice serve.max_resident) must be at least vllm.max_loras 4"
        in message
    )
    assert "vllm.gpu_memory_utilization 1.5 must be in (0, 1]" in message


def test_a_qlora_hub_checkpoint_is_refused_naming_the_fix(tmp_path: Path):
    from hub.models import CHECKPOINT_MANIFEST

    (tmp_path / CHECKPOINT_MANIFEST).write_text('{"method": "nf4"}')
    with pytest.raises(ConfigError, match="pass --base the model directory it was quantized from"):
        base_dir(tmp_path)


def test_a_directory_without_config_is_refused(tmp_path: Path):
    with pytest.raises(ConfigError, match="needs a Hugging Face model directory with config.json"):
        base_dir(tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_serving_without_vllm_installed_says_how_to_install_it(embedded_base: Path, tmp_path):
    from hub.config import load_settings
    from hub.engines import open_engine
    from hub.plugins import Hub

    hub = Hub()
    with pytest.raises(ConfigError, match=r"pip install 'qlora-hub\[vllm\]'"):
        open_engine(hub, load_settings(tmp_path, hub=hub), embedded_base, "vllm")


@pytest.mark.parametrize(
    ("error", "hint"),
    [
        (
            ValueError("No available memory for the cache blocks.\nTry increasing it"),
            "lower vllm.kv_cache_gib, vllm.gpu_memory_utilization or vllm.max_model_len",
        ),
        (
            ValueError("Model architectures ['FooForCausalLM'] are not supported for now."),
            "vLLM cannot run this base: serve it with --engine hf",
        ),
        (RuntimeError("engine core died"), "check the [vllm] settings, or serve with --engine hf"),
    ],
)
def test_start_up_failures_are_one_line_naming_what_to_change(error, hint):
    from plugins.vllm.loading import startup_error

    message = str(startup_error(error))
    assert "\n" not in message
    assert message.startswith(f"vLLM could not start: {type(error).__name__}: ")
    assert message.endswith("; " + hint)
