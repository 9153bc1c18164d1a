"""Training events: the ``training_event`` hook, the metrics JSONL, and the loss-curve PNG."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def make_event_callback(
    emit: Callable[[dict[str, Any]], None], metrics_file: Path | None, is_writer: bool
) -> Any:
    """A ``TrainerCallback`` that turns Trainer logs into hub events.

    Args:
        emit: called with every event (``kind`` step/eval/end, ``step``, metrics); the hub
            passes ``hub.pm.hook.training_event``.
        metrics_file: JSONL file that gets one line per event (written by rank 0 only).
        is_writer: this process writes files (rank 0).
    """
    from transformers import TrainerCallback

    class HubEvents(TrainerCallback):
        def __init__(self) -> None:
            self.started = time.monotonic()
            self.last: dict[str, Any] = {}

        def _send(self, event: dict[str, Any]) -> None:
            event["elapsed_s"] = round(time.monotonic() - self.started, 3)
            if is_writer:
                if metrics_file is not None:
                    with metrics_file.open("a", encoding="utf-8") as f:
                        f.write(json.dumps(event) + "\n")
                emit(event)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            logs = dict(logs or {})
            if "loss" in logs:
                event = {
                    "kind": "step",
                    "step": state.global_step,
                    "epoch": state.epoch,
                    "loss": float(logs["loss"]),
                    "learning_rate": float(logs.get("learning_rate", math.nan)),
                }
                if "grad_norm" in logs:
                    event["grad_norm"] = float(logs["grad_norm"])
                self.last["loss"] = event["loss"]
                self._send(event)
            if "eval_loss" in logs:
                self.last["eval_loss"] = float(logs["eval_loss"])
                self._send(
                    {
                        "kind": "eval",
                        "step": state.global_step,
                        "eval_loss": float(logs["eval_loss"]),
                    }
                )

        def finish(self, step: int, **final: Any) -> None:
            """Send the ``end`` event (after the final evaluation, so it carries eval_loss)."""
            self._send({"kind": "end", "step": step, **self.last, **final})

    return HubEvents()


def read_metrics(metrics_file: Path) -> list[dict[str, Any]]:
    """Events from a metrics JSONL file."""
    if not Path(metrics_file).is_file():
        return []
    return [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line]


def plot_loss(metrics_file: Path, out_png: Path, title: str) -> Path:
    """Draw training loss (and eval loss when present) against step into ``out_png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events = read_metrics(metrics_file)
    steps = [e for e in events if e["kind"] == "step"]
    evals = [e for e in events if e["kind"] == "eval"]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([e["step"] for e in steps], [e["loss"] for e in steps], label="train loss")
    if evals:
        ax.plot(
            [e["step"] for e in evals], [e["eval_loss"] for e in evals], "o-", label="eval loss"
        )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    tmp = out_png.with_name(out_png.stem + ".partial.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out_png)
    return out_png
