"""``qlora-hub bench train --optimizers a,b``: one QLoRA run per optimizer on one device.

Each optimizer trains the same base on the same variable-length rows (packed,
``--max-length`` tokens a row) for the same steps, in its own process, so its
peak memory is its own: ``torch.cuda.max_memory_allocated`` on a GPU, peak RSS
on the CPU. Next to it stands the QLoRA estimate of the trainer's memory
account (:func:`plugins.trainer.memory.qlora_estimate`: 4-bit weights + kept
layers + LoRA weights and gradients + optimizer state + activations). Every
optimizer is compared with the first one named (``ratios``): the paged
optimizers' state lives in CUDA managed memory, outside torch's allocator, so
on a GPU a paged optimizer shows a lower allocated peak than its non-paged twin.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import click

from hub.errors import HubError

RUN_KEYS = ("seconds", "tokens", "useful_tokens", "train_loss", "device", "optimizer")


def check_names(hub: Any, names: list[str]) -> None:
    """Refuse an empty list, repeats, or a name no plugin registered (one line, listing them)."""
    known = sorted(hub.optimizers)
    unknown = [n for n in names if n not in hub.optimizers]
    if not names or unknown or len(set(names)) != len(names):
        raise HubError(
            f"--optimizers {','.join(names) or '(none)'}: give distinct names from "
            f"{', '.join(known)}" + (f" ({', '.join(unknown)} unknown)" if unknown else "")
        )


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """One optimizer's row: the fastest repeat's figures, its peak memory and the estimate."""
    best = min(samples, key=lambda r: r["seconds"])
    memory = best["memory"]
    estimate = memory.get("estimate", {})
    return {
        **{k: best.get(k) for k in RUN_KEYS},
        "seconds": round(best["seconds"], 3),
        "all_seconds": [round(r["seconds"], 3) for r in samples],
        "tokens_per_s": round(best["tokens"] / best["seconds"], 1),
        "useful_tokens_per_s": round(best["useful_tokens"] / best["seconds"], 1),
        "peak_bytes": max(r["memory"]["peak_bytes"] for r in samples),
        "peak_kind": memory.get("peak_kind"),
        "estimate_bytes": estimate.get("total_bytes"),
        "peak_over_estimate": estimate.get("peak_over_estimate"),
        "estimate": estimate,
        "optimizer_state_bytes": memory.get("optimizer_state_bytes"),
        "peak_rss_bytes": best["peak_rss_bytes"],
    }


def ratios(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Each optimizer's tokens/s and peak memory over the first optimizer's."""
    first_name = next(iter(runs))
    first = runs[first_name]

    def over(a: Any, b: Any) -> float | None:
        return round(a / b, 3) if a and b else None

    return {
        f"{name}/{first_name}": {
            "tokens_per_s": over(r["tokens_per_s"], first["tokens_per_s"]),
            "peak_bytes": over(r["peak_bytes"], first["peak_bytes"]),
        }
        for name, r in runs.items()
        if name != first_name
    }


def bench_optimizers(
    hub: Any,
    names: list[str],
    gradient_checkpointing: bool = False,
    *,
    base: Path | None,
    shape: str,
    device: str,
    steps: int,
    batch_size: int,
    max_length: int,
    repeats: int,
) -> dict[str, Any]:
    """Train ``steps`` steps once per optimizer and repeat; see the module docstring.

    Args:
        hub: the plugin host (the optimizer names are checked against it).
        names: optimizers, in order; the first is the one the others are compared with.
        gradient_checkpointing: recompute activations in backward (all runs).
        base: Hugging Face directory or pre-quantized checkpoint; ``None`` builds a
            random base of ``shape``.
        device: ``cpu``, ``cuda``, ``cuda:N`` (already resolved).
    """
    from hub.base import build_base
    from plugins.trainer.bench import run_side, write_variable_length

    check_names(hub, names)
    if repeats < 1 or steps < 1 or batch_size < 1 or max_length < 2:
        raise HubError(
            "--repeats, --steps and --batch-size must be at least 1 and --max-length at least 2"
        )
    extra = ("--device", device, *(["--gradient-checkpointing"] if gradient_checkpointing else []))
    samples: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if base is None:
            build_base(tmp_path / "base", shape=shape)
        source = base or tmp_path / "base"
        data = write_variable_length(tmp_path / "variable.jsonl", max(64, 4 * batch_size * steps))
        for _ in range(repeats):
            for name in names:
                side = run_side(
                    "hub", source, data, steps, batch_size, max_length, True,
                    (*extra, "--optimizer", name),
                )  # fmt: skip
                samples[name].append(side)
    runs = {name: summarize(s) for name, s in samples.items()}
    return {
        "mode": "optimizers",
        "device": device,
        "gpu": _gpu_name(device),
        "base": str(base) if base else None,
        "shape": None if base else shape,
        "steps": steps,
        "batch_size": batch_size,
        "max_length": max_length,
        "packing": True,
        "gradient_checkpointing": gradient_checkpointing,
        "repeats": repeats,
        "runs": runs,
        "ratios": ratios(runs),
    }


def _gpu_name(device: str) -> str | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def print_optimizers(report: dict[str, Any]) -> None:
    """The report as one line per optimizer and one per ratio."""
    mib = 1 << 20
    click.echo(f"device {report['device']}" + (f" ({report['gpu']})" if report["gpu"] else ""))
    for name, r in report["runs"].items():
        ran = r["optimizer"].get("ran")
        click.echo(
            f"{name:20s} ran {ran:20s} {r['tokens_per_s']:10.1f} tok/s  "
            f"peak {r['peak_bytes'] / mib:9.1f} MiB ({r['peak_kind']})  "
            f"estimate {(r['estimate_bytes'] or 0) / mib:9.1f} MiB"
        )
    for pair, v in report["ratios"].items():
        click.echo(f"{pair}: tokens/s x{v['tokens_per_s']}, peak memory x{v['peak_bytes']}")
