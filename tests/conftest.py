"""Shared fixtures. The qlora-hub pytest plugin (hub.testing) is loaded through its
pytest11 entry point, so ``hub_factory``, ``embedded_base`` and ``qlora_home`` are here too.

Session fixtures for every suite that needs trained adapters (server, federated, demo):

- ``synthetic_data``: ``{"upper": {"train": Path, "held_out": Path}, "reverse": {...}}``
  (20000 training rows, 200 held-out words disjoint from them; deterministic).
- ``trained_adapters``: ``{"upper": Path, "reverse": Path}``, PEFT adapter directories
  (adapter_config.json + adapter_model.safetensors) trained on ``embedded_base`` with
  frozen A at the shared seed ``plugins.trainer.recipes.SHARED_A_SEED``, so their A
  matrices are byte-identical and averaging B is an exact merge. Each reaches >= 95%
  greedy exact match on its held-out words (tests/plugins/trainer/test_fixture_adapters.py).
  The run directory beside each (``path.parent``) holds manifest.json and metrics.jsonl.
"""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURE_TASKS = ("upper", "reverse")


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """Train and held-out JSONL files for the ``upper`` and ``reverse`` tasks."""
    from plugins.trainer.recipes import FIXTURE_ROWS
    from plugins.trainer.synth import synthesize

    root = tmp_path_factory.mktemp("synthetic")
    return {
        task: synthesize(task, FIXTURE_ROWS, root / task, held_out=200, seed=0)
        for task in FIXTURE_TASKS
    }


@pytest.fixture(scope="session")
def trained_adapters(
    embedded_base: Path,
    synthetic_data: dict[str, dict[str, Path]],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:
    """PEFT adapter directories for ``upper`` and ``reverse`` (frozen A, shared seed)."""
    import plugins.lora
    import plugins.nf4
    import plugins.paged
    from hub.plugins import Hub
    from plugins.trainer.recipes import FAST_FROZEN_A
    from plugins.trainer.train import train_adapter

    # only the plugins training needs, so a half-built plugin elsewhere cannot break this
    hub = Hub(
        builtins=False,
        entry_points=False,
        extra=[("nf4", plugins.nf4), ("lora", plugins.lora), ("paged", plugins.paged)],
    )
    root = tmp_path_factory.mktemp("adapters")
    return {
        task: train_adapter(
            hub,
            embedded_base,
            synthetic_data[task]["train"],
            root / task,
            name=task,
            log=None,
            **FAST_FROZEN_A,
        ).adapter_dir
        for task in FIXTURE_TASKS
    }
