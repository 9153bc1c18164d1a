"""One side of ``qlora-hub bench train``, run in its own process so its peak memory is its own.

``python -m plugins.trainer.bench_child {hub,reference} BASE DATA STEPS BATCH MAXLEN PACKING
[--device D] [--optimizer NAME] [--gradient-checkpointing]``
prints one JSON line: seconds, tokens (incl. padding), useful_tokens, peak_rss_bytes;
the hub side adds ``device``, ``train_loss``, ``optimizer`` (what ran) and ``memory``
(the trainer's account: measured peak and the QLoRA estimate).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
from pathlib import Path
from typing import Any


def hub_train(
    base: Path,
    data: Path,
    *,
    steps: int,
    batch_size: int,
    max_length: int,
    packing: bool,
    device: str = "auto",
    optimizer: str = "paged_adamw_32bit",
    gradient_checkpointing: bool = False,
) -> dict[str, Any]:
    """Train with :func:`train_adapter` (the same recipe as the reference)."""
    from hub.plugins import Hub
    from plugins.trainer.train import train_adapter

    with tempfile.TemporaryDirectory() as tmp:
        result = train_adapter(
            Hub(),
            base,
            data,
            Path(tmp) / "run",
            log=None,
            device=device,
            max_steps=steps,
            batch_size=batch_size,
            max_length=max_length,
            packing=packing,
            eval_fraction=0.0,
            logging_steps=max(1, steps),  # one log line: the last step's loss
            progress=False,
            learning_rate=2e-4,
            dropout=0.05,
            optimizer=optimizer,
            gradient_checkpointing=gradient_checkpointing,
        )
    m = result.metrics
    return {
        "seconds": result.train_seconds,
        "tokens": m["tokens"],
        "useful_tokens": m["useful_tokens"],
        "train_loss": m.get("train_loss"),
        "device": result.memory.get("device"),
        "optimizer": result.optimizer,
        "memory": result.memory,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m plugins.trainer.bench_child")
    parser.add_argument("side", choices=("hub", "reference"))
    for name in ("base", "data"):
        parser.add_argument(name, type=Path)
    for name in ("steps", "batch", "max_length", "packing"):
        parser.add_argument(name, type=int)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--optimizer", default="paged_adamw_32bit")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point (see the module docstring)."""
    args = _parser().parse_args(argv)
    import torch

    # one thread on both sides: equal footing, and no spin-waiting when the cores are shared
    torch.set_num_threads(1)
    kwargs = {"steps": args.steps, "batch_size": args.batch, "max_length": args.max_length}
    if args.side == "hub":
        out = hub_train(
            args.base,
            args.data,
            packing=args.packing == 1,
            device=args.device,
            optimizer=args.optimizer,
            gradient_checkpointing=args.gradient_checkpointing,
            **kwargs,
        )
    else:
        from plugins.trainer.reference import reference_train

        out = reference_train(
            args.base, args.data, device=args.device, optimizer=args.optimizer, **kwargs
        )
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("BENCH " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
