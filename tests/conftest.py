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
    """PEFT adapter directories for ``upper`` and ``reverse`` (frozen A, shared seed).

    The two adapters train at once in two ``qlora-hub train`` processes, one
    torch thread each, as two teams would on their own machines.
    """
    import subprocess
    import sys

    from plugins.trainer.recipes import FAST_FROZEN_A

    root = tmp_path_factory.mktemp("adapters")
    flags = _train_flags(FAST_FROZEN_A)
    procs = {}
    for task in FIXTURE_TASKS:
        log = (root / f"{task}.log").open("wb")
        cmd = [
            sys.executable,
            "-m",
            "hub",
            "--home",
            str(root / "home"),
            "train",
            "--base",
            str(embedded_base),
            "--data",
            str(synthetic_data[task]["train"]),
            "--adapter",
            task,
            "--no-store",
            "--out",
            str(root / task),
            *flags,
        ]
        procs[task] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
    for task, (proc, log) in procs.items():
        code = proc.wait()
        log.close()
        assert code == 0, (root / f"{task}.log").read_text()[-3000:]
    return {task: root / task / "adapter" for task in FIXTURE_TASKS}


def _train_flags(recipe: dict) -> list[str]:
    """``qlora-hub train`` flags for a recipe dict (``plugins.trainer.recipes``)."""
    names = {"learning_rate": "lr"}
    flags = []
    for key, value in recipe.items():
        if key == "progress":
            flags += [] if value else ["--quiet"]
            continue
        flag = "--" + names.get(key, key).replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags += [flag, str(value)]
    return flags
