"""Training recipes measured on the embedded base (2 CPU cores), for tests, demos and docs.

``FAST_FROZEN_A`` is what the shared ``trained_adapters`` test fixture uses:
frozen A at one seed (so two teams' adapters merge exactly by averaging B),
and the shortest schedule that reliably reached >= 95% held-out exact match
on ``upper`` and ``reverse`` (see docs/benchmarks.md, "Training").
"""

from __future__ import annotations

from typing import Any

SHARED_A_SEED = 20240607
"""The frozen-A seed every fixture adapter shares."""

FAST_FROZEN_A: dict[str, Any] = {
    "r": 16,
    "alpha": 32,
    "dropout": 0.0,
    "target_modules": "all-linear",
    "freeze_a": True,
    "a_seed": SHARED_A_SEED,
    "optimizer": "adamw",
    "learning_rate": 5e-3,
    "lr_scheduler": "cosine",
    "warmup_ratio": 0.03,
    "batch_size": 32,
    "max_steps": 1600,
    "max_length": 32,
    "eval_fraction": 0.0,
    "logging_steps": 50,
    "seed": 0,
    "progress": False,
    "threads": 1,
}
"""Frozen-A LoRA recipe for the synthetic word tasks (2000 training rows)."""

FIXTURE_ROWS = 2000
"""Training rows per synthetic task in the fixtures (plus 200 held out)."""
