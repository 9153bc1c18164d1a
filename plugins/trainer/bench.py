"""``qlora-hub bench train``: the hub trainer against a plain Trainer+PEFT+bitsandbytes script.

Both sides run in the same invocation, each in its own process (so peak RSS
is its own), on the same base, data, batch size, steps and optimizer. Two
comparisons:

- padded: synthetic ``upper`` rows, both sides padding each batch;
  ratio = hub tokens/s / reference tokens/s;
- packing: variable-length text rows; the hub packs them (padding-free), the
  reference pads; ratio = useful (non-pad) tokens/s of hub / reference.

With ``--optimizers a,b`` it measures something else instead
(:mod:`plugins.trainer.bench_optimizers`): the hub trainer once per optimizer on
``--device``, each with its peak memory against the QLoRA estimate.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from hub.cli import CliState, device_option, pass_state
from hub.errors import HubError


def write_variable_length(path: Path, n: int, seed: int = 0) -> Path:
    """``n`` ``{"text"}`` rows whose lengths spread evenly over 8-240 characters."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz     "
    with path.open("w", encoding="utf-8") as f:
        for _ in range(n):
            size = rng.randint(8, 240)
            f.write(json.dumps({"text": "".join(rng.choice(letters) for _ in range(size))}) + "\n")
    return path


def run_side(
    side: str,
    base: Path,
    data: Path,
    steps: int,
    batch: int,
    max_length: int,
    packing: bool,
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run one side in a child process and parse its ``BENCH {...}`` line.

    ``extra``: options of :mod:`plugins.trainer.bench_child` (``--device``, ``--optimizer``...).
    """
    cmd = [
        sys.executable,
        "-m",
        "plugins.trainer.bench_child",
        side,
        str(base),
        str(data),
        str(steps),
        str(batch),
        str(max_length),
        "1" if packing else "0",
        *extra,
    ]
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH "):
            out = json.loads(line[6:])
            out["tokens_per_s"] = out["tokens"] / out["seconds"]
            out["useful_tokens_per_s"] = out["useful_tokens"] / out["seconds"]
            return out
    raise HubError(f"benchmark side {side!r} failed: {proc.stderr.strip().splitlines()[-1:]}")


RUNS = {
    # name: (side, data kind, max_length, packing)
    "reference_padded": ("reference", "padded", 64, False),
    "hub_padded": ("hub", "padded", 64, False),
    "reference_variable_padded": ("reference", "variable", 256, False),
    "hub_variable_packed": ("hub", "variable", 256, True),
}


def best_of(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest of a run's repeats (least disturbed by other work), with every time kept."""
    best = dict(min(samples, key=lambda r: r["seconds"]))
    best["all_seconds"] = [round(r["seconds"], 2) for r in samples]
    return best


def bench_train(
    base: Path | None,
    steps: int,
    batch: int,
    repeats: int = 3,
    padded_steps: int = 120,
    device: str = "cpu",
    shape: str = "embedded",
) -> dict[str, Any]:
    """Run the four measurements ``repeats`` times, interleaved, and the two ratios.

    The padded pair runs ``padded_steps`` (its rows are short, so steps are
    cheap and more of them keep the ratio out of the noise); the
    variable-length pair runs ``steps``.

    Each repeat runs all four sides in turn, so a burst of other work on the
    machine hits both sides of a ratio alike; each side keeps its fastest repeat.
    Both sides run on ``device``.
    """
    from rich.progress import Progress

    from hub.base import build_base
    from plugins.trainer.synth import synthesize

    if repeats < 1:
        raise HubError(f"--repeats must be at least 1, got {repeats}")
    if min(steps, padded_steps) < 1:
        raise HubError(
            f"--steps and --padded-steps must be at least 1, got {steps}, {padded_steps}"
        )
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in RUNS}
    with tempfile.TemporaryDirectory() as tmp, Progress(transient=True) as progress:
        tmp_path = Path(tmp)
        if base is None:
            base = tmp_path / "base"
            build_base(base, shape=shape)
        data = {
            "padded": synthesize("upper", 2000, tmp_path / "upper")["train"],
            "variable": write_variable_length(tmp_path / "variable.jsonl", 1000),
        }
        task = progress.add_task("bench train", total=repeats * len(RUNS))
        for _ in range(repeats):
            for name, (side, kind, max_length, packing) in RUNS.items():
                progress.update(task, description=name)
                n = padded_steps if kind == "padded" else steps
                samples[name].append(
                    run_side(
                        side, base, data[kind], n, batch, max_length, packing, ("--device", device)
                    )
                )
                progress.advance(task)
    runs = {name: best_of(s) for name, s in samples.items()}
    for r in runs.values():
        r["seconds"] = round(r["seconds"], 2)
        r["tokens_per_s"] = round(r["tokens_per_s"], 1)
        r["useful_tokens_per_s"] = round(r["useful_tokens_per_s"], 1)
    return {
        "device": device,
        "steps": steps,
        "padded_steps": padded_steps,
        "batch_size": batch,
        "repeats": repeats,
        "runs": runs,
        "padded_tokens_per_s_ratio": round(
            runs["hub_padded"]["tokens_per_s"] / runs["reference_padded"]["tokens_per_s"], 3
        ),
        "padded_peak_rss_ratio": round(
            runs["hub_padded"]["peak_rss_bytes"] / runs["reference_padded"]["peak_rss_bytes"], 3
        ),
        "packed_useful_tokens_per_s_ratio": round(
            runs["hub_variable_packed"]["useful_tokens_per_s"]
            / runs["reference_variable_padded"]["useful_tokens_per_s"],
            3,
        ),
    }


@click.command("train")
@click.option(
    "--base",
    type=click.Path(path_type=Path),
    default=None,
    help="HF model directory (or, with --optimizers, a pre-quantized checkpoint) "
    "[default: a fresh base of --shape].",
)
@click.option(
    "--shape",
    default="embedded",
    show_default=True,
    help="Shape of the fresh base when --base is not given (embedded, 103m, 1b).",
)
@click.option(
    "--optimizers",
    default=None,
    help="Comma-separated optimizers (e.g. paged_adamw_32bit,adamw): the hub trainer once per "
    "optimizer, peak memory vs the QLoRA estimate, instead of the hub/reference ratios.",
)
@click.option(
    "--max-length",
    type=int,
    default=256,
    show_default=True,
    help="Packed row length with --optimizers.",
)
@click.option(
    "--gradient-checkpointing/--no-gradient-checkpointing",
    default=False,
    show_default=True,
    help="With --optimizers: recompute activations in backward.",
)
@click.option(
    "--steps", type=int, default=30, show_default=True, help="Steps of the variable-length pair."
)
@click.option(
    "--padded-steps", type=int, default=120, show_default=True, help="Steps of the padded pair."
)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option(
    "--repeats",
    type=int,
    default=3,
    show_default=True,
    help="Interleaved repeats; each side keeps its fastest.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON only.")
@device_option
@pass_state
def bench_train_cmd(
    state: CliState,
    base: Path | None,
    shape: str,
    optimizers: str | None,
    max_length: int,
    gradient_checkpointing: bool,
    steps: int,
    padded_steps: int,
    batch_size: int,
    repeats: int,
    as_json: bool,
    device: str | None,
) -> None:
    """Tokens/s and peak RSS of the hub trainer vs a plain Trainer+PEFT+bitsandbytes script."""
    from hub.base import shape_config
    from hub.models import resolve_device

    device = str(resolve_device(state.device(device)))  # a bad --device fails before any work
    shape_config(shape)  # an unknown --shape too
    if optimizers is not None:
        from plugins.trainer.bench_optimizers import bench_optimizers, print_optimizers

        names = [n.strip() for n in optimizers.split(",") if n.strip()]
        spec = {"base": base, "shape": shape, "device": device, "steps": steps}
        spec.update(batch_size=batch_size, max_length=max_length, repeats=repeats)
        report = bench_optimizers(state.hub, names, gradient_checkpointing, **spec)
        if as_json:
            click.echo(json.dumps(report, indent=2))
        else:
            print_optimizers(report)
        return
    report = bench_train(base, steps, batch_size, repeats, padded_steps, device, shape)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for name, r in report["runs"].items():
        click.echo(
            f"{name:28s} {r['tokens_per_s']:9.1f} tok/s  {r['useful_tokens_per_s']:9.1f} "
            f"useful tok/s  peak RSS {r['peak_rss_bytes'] / 2**20:7.1f} MiB"
        )
    click.echo(f"padded tokens/s ratio (hub/reference): {report['padded_tokens_per_s_ratio']}")
    click.echo(f"packed useful tokens/s ratio: {report['packed_useful_tokens_per_s_ratio']}")
