"""``qlora-hub bench fed-accuracy``: exact match of each team's adapter and of their merges.

Given trained PEFT adapters (frozen A at one shared seed) and a held-out
JSONL file per task, it merges them through real ``ckks`` rounds and reports
greedy exact match of every single adapter and every merge on every task.
Evaluation reuses the trainer plugin's ``exact_match_file``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import click

from hub.cli import CliState, pass_state
from hub.errors import ValidationError


def parse_task(spec: str) -> tuple[str, Path, Path]:
    """``NAME=ADAPTER_DIR:HELD_OUT.jsonl`` -> (name, adapter dir, held-out file)."""
    name, sep, rest = spec.partition("=")
    adapter, sep2, held = rest.rpartition(":")
    if not (sep and sep2 and name and Path(adapter).is_dir() and Path(held).is_file()):
        raise ValidationError(
            f"--task {spec!r} must be NAME=ADAPTER_DIR:HELD_OUT.jsonl with both paths existing"
        )
    return name, Path(adapter), Path(held)


def ckks_merge(
    hub: Any, adapters: dict[str, Path], weights: dict[str, float], mode: str, work: Path
) -> tuple[Path, dict]:
    """Merge ``adapters`` in a one-machine ckks round; return (PEFT dir, report)."""
    from hub.teams import create_team
    from hub.types import AdapterPayload
    from plugins.ckks.signing import team_signer, trust_store_verifier

    home = work / "home"
    names = [*adapters, "hold"]
    for n in names:
        create_team(home, n, passphrase=None)
    sign = {n: team_signer(home, n) for n in names}
    verify = trust_store_verifier(home)
    agg, rdir, kdir = hub.aggregators["ckks"], work / "round", work / "keys"
    agg.init_round(
        rdir,
        round_id="acc",
        teams=list(adapters),
        mode=mode,
        key_dir=kdir,
        key_holder="hold",
        sign=sign["hold"],
    )
    for team, path in adapters.items():
        agg.contribute(
            rdir,
            team=team,
            adapter=AdapterPayload.from_dir(path, team),
            weight=weights[team],
            sign=sign[team],
            verify=verify,
        )
    agg.aggregate(rdir, verify=verify)
    merged = agg.finalize(rdir, key_dir=kdir, name="merged", verify=verify)
    out = work / "merged"
    out.mkdir()
    for fname, data in merged.files.items():
        (out / fname).write_bytes(data)
    return out, merged.manifest["fed"]


@click.command("fed-accuracy")
@click.option(
    "--base",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="Base model directory the adapters were trained on.",
)
@click.option(
    "--task",
    "tasks",
    multiple=True,
    required=True,
    help="NAME=ADAPTER_DIR:HELD_OUT.jsonl, one per team (repeat).",
)
@click.option(
    "--mode", type=click.Choice(["ffa", "fedavg", "dense"]), default="ffa", show_default=True
)
@click.option("--limit", type=int, default=100, show_default=True, help="Held-out rows per task.")
@click.option(
    "--quantizer",
    default="nf4",
    show_default=True,
    help="How to load the base (as the adapters were trained).",
)
@pass_state
def bench_fed_accuracy(
    state: CliState, base: Path, tasks: tuple[str, ...], mode: str, limit: int, quantizer: str
) -> None:
    """Exact match of each team's adapter, their average (p=1/K) and their sum (p=1) on every task."""
    import torch
    from peft import PeftModel

    from hub.models import load_base
    from plugins.trainer.data import read_rows
    from plugins.trainer.evaluate import exact_match

    parsed = [parse_task(t) for t in tasks]
    adapters = {n: a for n, a, _ in parsed}
    held = {n: [r for _, r in read_rows(h)][:limit] for n, _, h in parsed}
    work = Path(tempfile.mkdtemp(prefix="fed-accuracy-"))
    try:
        candidates = dict(adapters)
        reports = {}
        k = len(adapters)
        for label, w in ((f"{mode} p=1/{k}", 1 / k), (f"{mode} p=1", 1.0)):
            sub = work / label.replace(" ", "_").replace("/", "-").replace("=", "")
            sub.mkdir()
            candidates[label], reports[label] = ckks_merge(
                state.hub, adapters, dict.fromkeys(adapters, w), mode, sub
            )
        rows = []
        for label, path in candidates.items():
            loaded = load_base(state.hub, base, quantizer)
            tokenizer = loaded.tokenizer
            model = PeftModel.from_pretrained(loaded.model, path).eval()
            with torch.no_grad():
                scores = {t: exact_match(model, tokenizer, r).accuracy for t, r in held.items()}
            rows.append({"adapter": label, **scores})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    click.echo(
        json.dumps(
            {
                "benchmark": "fed-accuracy",
                "mode": mode,
                "rows_per_task": limit,
                "exact_match": rows,
                "merge_reports": {
                    k: {x: v[x] for x in ("weights", "weight_sum")} for k, v in reports.items()
                },
            },
            indent=2,
        )
    )
