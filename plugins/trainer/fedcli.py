"""``qlora-hub fed run``: chained federated rounds with every role played on this machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from hub.cli import CliState, pass_state


@click.command("run")
@click.option("--base", required=True, help="Base every team trains on (directory or checkpoint).")
@click.option("--shard", "shards", multiple=True, required=True, help="TEAM=FILE, repeated.")
@click.option("--rounds", type=int, default=3, show_default=True)
@click.option("--mode", type=click.Choice(["ffa", "fedavg"]), default="ffa", show_default=True)
@click.option("--steps", type=int, default=100, show_default=True, help="Steps per team per round.")
@click.option("--lr", type=float, default=5e-3, show_default=True)
@click.option("--round-lr", type=click.Choice(["cosine", "restart"]), default="cosine",
              show_default=True,
              help="cosine: one schedule over all rounds (round k at lr*(1+cos(pi(k-1/2)/R))/2); "
              "restart: each round warms up and decays on its own.")  # fmt: skip
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--r", "r", type=int, default=16, show_default=True)
@click.option("--aggregator", default="ckks", show_default=True, help="ckks or plain.")
@click.option("--eval-data", type=click.Path(exists=True, path_type=Path), default=None,
              help="JSONL scored (greedy exact match) after every round.")  # fmt: skip
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Work directory (new or empty): rounds, keys, merged adapters.")  # fmt: skip
@pass_state
def fed_run_cmd(
    state: CliState,
    base: str,
    shards: tuple[str, ...],
    rounds: int,
    mode: str,
    steps: int,
    lr: float,
    round_lr: str,
    batch_size: int,
    r: int,
    aggregator: str,
    eval_data: Path | None,
    out: Path,
) -> None:
    """Experiments: train every team, merge, and start the next round from the merge.

    Prints one JSON line per round (the merged adapter, the round it started
    from, weights and shares, and exact match on --eval-data).
    """
    from hub.errors import ValidationError
    from plugins.trainer.data import read_rows
    from plugins.trainer.fedbench import Scorer, bench_options
    from plugins.trainer.fedrun import FedPlan, parse_shards, run_rounds

    if out.exists() and any(out.iterdir()):
        raise ValidationError(f"--out {out} is not empty: pick a new directory")
    plan = FedPlan(Path(base), parse_shards(shards), rounds, mode,
                   bench_options(steps, lr, batch_size, r), aggregator=aggregator,
                   round_lr=round_lr)  # fmt: skip
    score = None
    if eval_data:
        score = Scorer(state.hub, Path(base), {"eval": [row for _, row in read_rows(eval_data)]})

    def report(res: Any) -> None:
        line: dict[str, Any] = {"round": res.round, "merged": str(res.merged_dir)}
        line.update(start=res.start, weights=res.report["weights"], shares=res.report["shares"])
        line.update(train_seconds=res.train_seconds, learning_rate=res.learning_rate)
        if score:
            line["exact_match"] = score(res.merged_dir)["eval"]
        click.echo(json.dumps(line, sort_keys=True))

    run_rounds(state.hub, plan, out, report)
