"""Training recipes measured on the embedded base (2 CPU cores), for tests, demos and docs.

``FAST_FROZEN_A`` is what the shared ``trained_adapters`` test fixture uses:
frozen A at one seed (so two teams' adapters merge exactly by averaging B),
and a short schedule over many distinct words. Measured on ``upper``: with
2000 training words the held-out accuracy stalls at 83-90% however long the
run (1600 steps of batch 32 = 27 epochs: 83.5%; the adapter memorises the
training words), so the fixture trains on 20000 words for about one epoch
(see docs/benchmarks.md, "Training").
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
"""Frozen-A LoRA recipe for the synthetic word tasks (20000 training rows, about 1.3 epochs)."""

FIXTURE_ROWS = 20000
"""Training rows per synthetic task in the fixtures (plus 200 held out)."""
