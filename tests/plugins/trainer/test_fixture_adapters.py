"""The shared ``trained_adapters`` fixture keeps its promises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from hub.types import AdapterPayload


@pytest.fixture(scope="module")
def accuracies(embedded_base: Path, trained_adapters, synthetic_data) -> dict[str, float]:
    import plugins.lora
    import plugins.nf4
    from hub.models import load_base
    from hub.plugins import Hub
    from plugins.trainer.evaluate import exact_match_file

    hub = Hub(
        builtins=False, entry_points=False, extra=[("nf4", plugins.nf4), ("lora", plugins.lora)]
    )
    out = {}
    for task, adapter_dir in trained_adapters.items():
        loaded = load_base(hub, embedded_base)
        model = hub.adapters["lora"].load(
            loaded.model, AdapterPayload.from_dir(adapter_dir, task), task
        )
        out[task] = exact_match_file(model, loaded.tokenizer, synthetic_data[task]["held_out"])
    return out


def test_upper_adapter_reaches_95_percent_held_out_exact_match(accuracies) -> None:
    assert accuracies["upper"].total == 200
    assert accuracies["upper"].accuracy >= 0.95


def test_reverse_adapter_reaches_95_percent_held_out_exact_match(accuracies) -> None:
    assert accuracies["reverse"].total == 200
    assert accuracies["reverse"].accuracy >= 0.95


def test_fixture_adapters_share_byte_identical_a_matrices(trained_adapters) -> None:
    up = load_file(str(trained_adapters["upper"] / AdapterPayload.WEIGHTS))
    rev = load_file(str(trained_adapters["reverse"] / AdapterPayload.WEIGHTS))
    a_keys = sorted(k for k in up if "lora_A" in k)
    assert a_keys and a_keys == sorted(k for k in rev if "lora_A" in k)
    assert all(up[k].numpy().tobytes() == rev[k].numpy().tobytes() for k in a_keys)
    assert any(not (up[k] == rev[k]).all() for k in up if "lora_B" in k)


def test_fixture_adapter_directories_hold_only_peft_files(trained_adapters) -> None:
    for adapter_dir in trained_adapters.values():
        assert sorted(p.name for p in adapter_dir.iterdir()) == [
            "adapter_config.json",
            "adapter_model.safetensors",
        ]
        assert json.loads((adapter_dir / "adapter_config.json").read_text())["peft_type"] == "LORA"
