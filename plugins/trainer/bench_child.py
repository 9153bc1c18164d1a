"""One side of ``qlora-hub bench train``, run in its own process so its peak RSS is its own.

``python -m plugins.trainer.bench_child {hub,reference} BASE DATA STEPS BATCH MAXLEN PACKING``
prints one JSON line: seconds, tokens (incl. padding), useful_tokens, peak_rss_bytes.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any


def hub_train(
    base: Path, data: Path, *, steps: int, batch_size: int, max_length: int, packing: bool
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
            max_steps=steps,
            batch_size=batch_size,
            max_length=max_length,
            packing=packing,
            eval_fraction=0.0,
            logging_steps=10**6,
            progress=False,
            learning_rate=2e-4,
            dropout=0.05,
        )
    m = result.metrics
    return {
        "seconds": result.train_seconds,
        "tokens": m["tokens"],
        "useful_tokens": m["useful_tokens"],
    }


def main() -> None:
    """Entry point (see the module docstring)."""
    side, base, data, steps, batch, max_length, packing = sys.argv[1:8]
    import torch

    # one thread on both sides: equal footing, and no spin-waiting when the cores are shared
    torch.set_num_threads(1)
    kwargs = {"steps": int(steps), "batch_size": int(batch), "max_length": int(max_length)}
    if side == "hub":
        out = hub_train(Path(base), Path(data), packing=packing == "1", **kwargs)
    else:
        from plugins.trainer.reference import reference_train

        out = reference_train(Path(base), Path(data), **kwargs)
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("BENCH " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
