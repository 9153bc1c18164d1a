"""CLI: ``qlora-hub train``, ``eval``, ``merge`` and ``data synth`` (``bench train`` is in bench.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from hub.cli import CliState, device_option, pass_state

# flag -> TrainOptions field, for the options that are plain values
_VALUE_FLAGS: list[tuple[str, str, type, str]] = [
    ("--r", "r", int, "LoRA rank (> 0)."),
    ("--alpha", "alpha", int, "LoRA alpha."),
    ("--dropout", "dropout", float, "LoRA dropout."),
    ("--target-modules", "target_modules", str, "all-linear or comma-separated module names."),
    ("--a-seed", "a_seed", int, "Seed of the frozen A matrices (with --freeze-a)."),
    ("--optimizer", "optimizer", str, "paged_adamw_32bit, paged_adamw_8bit, adamw_8bit, adamw."),
    ("--lr", "learning_rate", float, "Peak learning rate."),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay."),
    ("--lr-scheduler", "lr_scheduler", str, "cosine, linear, constant, constant_with_warmup."),
    ("--warmup-ratio", "warmup_ratio", float, "Share of steps spent warming up."),
    ("--batch-size", "batch_size", int, "Rows per device per step."),
    ("--grad-accum", "grad_accum", int, "Gradient accumulation steps."),
    ("--max-steps", "max_steps", int, "Stop after this many optimizer steps (overrides --epochs)."),
    ("--epochs", "epochs", float, "Epochs when --max-steps is not set."),
    ("--max-length", "max_length", int, "Longest sequence in tokens."),
    ("--eval-fraction", "eval_fraction", float, "Share of the data held out for eval loss."),
    ("--eval-steps", "eval_steps", int, "Eval loss every N steps (0: at the end only)."),
    ("--save-steps", "save_steps", int, "Checkpoint every N steps (0: none)."),
    ("--logging-steps", "logging_steps", int, "Log (and emit training_event) every N steps."),
    ("--seed", "seed", int, "Random seed."),
    ("--threads", "threads", int, "torch CPU threads (0: torch's default)."),
]
_BOOL_FLAGS: list[tuple[str, str, str]] = [
    ("use-rslora", "use_rslora", "Rank-stabilised LoRA scaling."),
    ("use-dora", "use_dora", "DoRA (weight-decomposed LoRA)."),
    ("freeze-a", "freeze_a", "Seeded frozen A, train B only (exact federated merge)."),
    ("gradient-checkpointing", "gradient_checkpointing", "Recompute activations in backward."),
    ("packing", "packing", "Pack rows into padding-free batches."),
    ("completion-only", "completion_only", "Loss on completions only (default on)."),
    ("strict", "strict", "Refuse rows longer than --max-length instead of truncating."),
]


def _train_options(fn: Any) -> Any:
    for flag, dest, typ, help_text in reversed(_VALUE_FLAGS):
        fn = click.option(flag, dest, type=typ, default=None, help=help_text)(fn)
    for flag, dest, help_text in reversed(_BOOL_FLAGS):
        fn = click.option(f"--{flag}/--no-{flag}", dest, default=None, help=help_text)(fn)
    return fn


def next_run_dir(runs: Path, name: str) -> Path:
    """``runs/name``, or ``runs/name-2``, ``-3``... when taken: an earlier run is never overwritten."""
    candidate, n = runs / name, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = runs / f"{name}-{n}"
    return candidate


@click.command("train")
@click.option("--base", required=True, help="Base: pre-quantized checkpoint, HF directory or id.")
@click.option("--data", "data", required=True, type=click.Path(path_type=Path), help="JSONL data.")
@click.option("--adapter", "name", required=True, help="Adapter name (a new version if it exists).")
@click.option(
    "--config",
    "train_toml",
    type=click.Path(path_type=Path),
    default=None,
    help="TOML file with training options (top level or [train]).",
)
@click.option(
    "--resume", is_flag=True, help="Continue the run in --out from its newest checkpoint."
)
@click.option(
    "--eval-data",
    type=click.Path(path_type=Path),
    default=None,
    help="JSONL for eval loss [default: --eval-fraction of --data].",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Run directory [default <home>/runs/NAME, or NAME-2... if taken].",
)
@click.option("--team", default=None, help="Team that publishes the adapter [setting hub.team].")
@click.option("--storage", default=None, help="Storage backend [setting hub.storage].")
@click.option("--no-store", is_flag=True, help="Only write the run directory.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--init-adapter",
    "init_spec",
    default=None,
    help="Start from this adapter's weights: NAME@VERSION in storage, or a directory.",
)
@_train_options
@device_option
@pass_state
def train_cmd(
    state: CliState,
    base: str,
    data: Path,
    name: str,
    train_toml: Path | None,
    resume: bool,
    eval_data: Path | None,
    out: Path | None,
    team: str | None,
    storage: str | None,
    no_store: bool,
    quiet: bool,
    init_spec: str | None,
    device: str | None,
    **flags: Any,
) -> None:
    """Train a QLoRA adapter on BASE with DATA (JSONL) using the transformers Trainer."""
    from hub.models import resolve_device
    from hub.store import open_store
    from hub.types import AdapterRef
    from plugins.trainer.distributed import agree_on_run_dir, world
    from plugins.trainer.options import build_options
    from plugins.trainer.train import train_adapter

    AdapterRef.parse(name)
    if quiet:
        flags["progress"] = False
    settings_train = state.settings.values.get("train", {})
    opts = build_options(settings_train, train_toml, flags)
    device = state.device(device)
    resolve_device(device)  # a bad --device fails before anything is read or created
    rank, _ = world()
    runs = state.home / "runs"
    if out is None:
        out = runs / name if resume else next_run_dir(runs, name)
    out = agree_on_run_dir(out, device)
    team = team or state.settings.get("hub.team") or None
    store = None
    if not no_store and team and rank == 0:
        store = open_store(state.hub, state.settings, storage, team=team)
    log = click.echo if rank == 0 else None
    init_adapter = None
    if init_spec:
        from plugins.trainer.adapters import resolve_adapter

        init_adapter = resolve_adapter(
            init_spec, hub=state.hub, settings=state.settings, team=team, storage=storage
        )
    result = train_adapter(
        state.hub,
        base,
        data,
        out,
        name=name,
        eval_data=eval_data,
        resume=resume,
        store=store,
        team=team,
        log=log,
        options=opts,
        init_adapter=init_adapter,
        device=device,
    )
    click.echo(f"rank {result.rank}/{result.world_size}: adapter sha256 {result.adapter_sha256}")
    if rank != 0:
        return
    metrics = result.metrics
    line = (
        f"trained {name}: {result.steps} steps in {result.train_seconds:.1f} s, "
        f"train loss {metrics.get('train_loss') or float('nan'):.4f}"
    )
    if "eval_loss" in metrics:
        line += f", eval loss {metrics['eval_loss']:.4f}"
    click.echo(line)
    opt = result.optimizer
    click.echo(
        f"optimizer: requested {opt['requested']}, ran {opt['ran']}"
        + (f" ({opt['note']})" if "note" in opt else "")
    )
    click.echo(f"run directory: {result.run_dir}")
    if result.stored:
        click.echo(f"stored as {result.stored} (team {team})")
    elif not no_store:
        click.echo("not stored: no team (pass --team or set QLORA_HUB_TEAM), or --no-store")


@click.command("synth")
@click.argument("task")
@click.option("--n", "n", type=int, default=2000, show_default=True, help="Training rows.")
@click.option("--held-out", type=int, default=200, show_default=True, help="Held-out rows.")
@click.option("--seed", type=int, default=0, show_default=True, help="Word seed.")
@click.option("--letters", default=None, help="Alphabet of the words, e.g. abcdefghijklm [a-z].")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output directory.")
def synth_cmd(task: str, n: int, held_out: int, seed: int, letters: str | None, out: Path) -> None:
    """Write a synthetic TASK (upper, reverse, capitalize, sort, rot13) as train/held-out JSONL."""
    from plugins.trainer.synth import ALPHABET, synthesize

    paths = synthesize(task, n, out, held_out=held_out, seed=seed, letters=letters or ALPHABET)
    click.echo(f"wrote {n} rows to {paths['train']} and {held_out} to {paths['held_out']}")


@click.command("eval")
@click.argument("adapter")
@click.option("--base", default=None, help="Base [default: the one the adapter's manifest names].")
@click.option("--data", "data", required=True, type=click.Path(path_type=Path), help="JSONL rows.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--team", default=None, help="Team to pull a stored adapter as.")
@click.option("--storage", default=None, help="Storage backend for NAME@VERSION.")
@click.option("--show", type=int, default=3, show_default=True, help="Print N wrong predictions.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@device_option
@pass_state
def eval_cmd(
    state: CliState,
    adapter: str,
    base: str | None,
    data: Path,
    batch_size: int,
    team: str | None,
    storage: str | None,
    show: int,
    as_json: bool,
    device: str | None,
) -> None:
    """Greedy exact-match accuracy of ADAPTER (directory or NAME@VERSION) on DATA."""
    import json

    from hub.models import load_base, resolve_device
    from plugins.trainer.adapters import base_of, resolve_adapter
    from plugins.trainer.evaluate import exact_match_file

    device = state.device(device)
    resolve_device(device)  # a bad --device fails before the adapter is pulled
    payload = resolve_adapter(
        adapter, hub=state.hub, settings=state.settings, team=team, storage=storage
    )
    loaded = load_base(state.hub, base_of(payload, base), device=device)
    method = state.hub.adapters[(payload.manifest or {}).get("adapter_method", "lora")]
    model = method.load(loaded.model, payload, "default")
    result = exact_match_file(model, loaded.tokenizer, data, batch_size=batch_size)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "adapter": adapter,
                    "accuracy": result.accuracy,
                    "correct": result.correct,
                    "total": result.total,
                    "device": str(loaded.device),
                }
            )
        )
        return
    click.echo(f"exact match: {result.correct}/{result.total} = {result.accuracy:.1%}")
    for p in [p for p in result.predictions if p["got"] != p["expected"]][:show]:
        click.echo(f"  {p['prompt']!r}: expected {p['expected']!r}, got {p['got']!r}")


@click.command("merge")
@click.argument("adapter")
@click.option("--base", default=None, help="Base [default: the one the adapter's manifest names].")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="New model directory.")
@click.option("--team", default=None, help="Team to pull a stored adapter as.")
@click.option("--storage", default=None, help="Storage backend for NAME@VERSION.")
@device_option
@pass_state
def merge_cmd(
    state: CliState,
    adapter: str,
    base: str | None,
    out: Path,
    team: str | None,
    storage: str | None,
    device: str | None,
) -> None:
    """Merge ADAPTER into a bf16 copy of its base and save a standalone HF model."""
    from hub.models import resolve_device
    from plugins.trainer.adapters import base_of, resolve_adapter
    from plugins.trainer.merge import merge_adapter

    device = state.device(device)
    resolve_device(device)  # a bad --device fails before the adapter is pulled

    payload = resolve_adapter(
        adapter, hub=state.hub, settings=state.settings, team=team, storage=storage
    )
    report = merge_adapter(state.hub, base_of(payload, base), payload, out, device=device)
    click.echo(f"merged {payload.name} into {out} ({report['parameters']:,} parameters, bf16)")
    click.echo(
        f"max |logit difference| merged vs base+adapter on {report['samples']} samples: "
        f"{report['max_abs_diff']:.4g} (logit scale {report['logit_scale']:.3g})"
    )


def add_commands(cli: click.Group) -> None:
    """Attach every trainer command to the root group."""
    from plugins.trainer.bench import bench_train_cmd
    from plugins.trainer.fedbench import bench_fed_accuracy
    from plugins.trainer.fedcli import fed_run_cmd

    cli.add_command(train_cmd)
    cli.add_command(eval_cmd)
    cli.add_command(merge_cmd)
    cli.commands["data"].add_command(synth_cmd)
    cli.commands["bench"].add_command(bench_train_cmd)
    cli.commands["bench"].add_command(bench_fed_accuracy)
    cli.commands["fed"].add_command(fed_run_cmd)
