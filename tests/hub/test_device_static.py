"""Static checks: the loaders and the trainer never pin the CPU or pick the device themselves.

The device is decided in one place (:func:`hub.models.resolve_device`); everything
after that takes it from its argument or from the model.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOAD_AND_TRAIN = [
    "hub/models.py",
    "server/model.py",
    *[f"plugins/{d}/{p.name}" for d in ("nf4", "trainer", "paged", "lora")
      for p in sorted((ROOT / "plugins" / d).glob("*.py"))
      if not p.name.startswith(("bench", "fed"))],
]  # fmt: skip
CPU_PIN = re.compile(r"""device_map\s*=\s*["']cpu["']|\{\s*["']{2}\s*:\s*["']cpu["']\s*\}""")
# where asking torch is right: resolving "auto", and saving the CUDA RNG state if it exists
MAY_ASK_TORCH = {"hub/models.py", "plugins/trainer/checkpoint.py"}


def test_the_list_covers_the_loaders_and_the_trainer() -> None:
    for path in ("plugins/nf4/direct.py", "plugins/nf4/quantizers.py", "plugins/trainer/train.py",
                 "plugins/trainer/merge.py", "plugins/trainer/evaluate.py"):  # fmt: skip
        assert path in LOAD_AND_TRAIN


def test_no_loader_or_trainer_pins_the_cpu() -> None:
    pinned = [p for p in LOAD_AND_TRAIN if CPU_PIN.search((ROOT / p).read_text())]
    assert pinned == []


def test_only_resolve_device_asks_torch_which_device_to_use() -> None:
    asking = [
        p
        for p in LOAD_AND_TRAIN
        if "torch.cuda.is_available()" in (ROOT / p).read_text() and p not in MAY_ASK_TORCH
    ]
    assert asking == []
