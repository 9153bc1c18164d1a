"""``qlora-hub fed run`` and ``qlora-hub bench fed-accuracy``: multi-round federated training.

``bench fed-accuracy`` measures the standard federated-learning result on the
embedded base: two teams hold disjoint, differently distributed halves of one
task (``upper``). With ``--split first`` (the default) team ``a`` holds the
words that begin with a-m and team ``b`` those that begin with n-z (every
letter still appears inside both teams' words); with ``--split letters`` team
``a``'s words use only the letters a-m and ``b``'s only n-z, so each team alone
cannot uppercase half the alphabet at all (the hard case). Greedy exact match
on the union of both held-out sets, for each team alone and for centralized
training on all data (the same steps per team), and for federated training
after every round, as JSON and a PNG plot.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from hub.cli import CliState, pass_state

SPLIT = {"a": "abcdefghijklm", "b": "nopqrstuvwxyz"}
"""Team -> its letters: the first letter of its words (``first``) or all of them (``letters``)."""
SPLITS = ("first", "letters")


def bench_options(steps: int, lr: float, batch_size: int, r: int) -> Any:
    """Per-round training options of the benchmark (frozen-A recipe, fixed schedule)."""
    from plugins.trainer.options import TrainOptions
    from plugins.trainer.recipes import FAST_FROZEN_A

    recipe = {**FAST_FROZEN_A, "max_steps": steps, "learning_rate": lr, "threads": 1}
    return TrainOptions(**{**recipe, "batch_size": batch_size, "r": r, "alpha": 2 * r})


class Scorer:
    """Greedy exact match of adapter directories on fixed rows (base loaded per call)."""

    def __init__(self, hub: Any, base: Path, rows: dict[str, list[dict]]) -> None:
        self.hub, self.base, self.rows = hub, base, rows

    def __call__(self, adapter_dir: Path) -> dict[str, float]:
        import torch

        from hub.models import load_base
        from hub.types import AdapterPayload
        from plugins.trainer.evaluate import exact_match

        loaded = load_base(self.hub, self.base)
        payload = AdapterPayload.from_dir(adapter_dir, "scored")
        model = self.hub.adapters["lora"].load(loaded.model, payload, "default").eval()
        with torch.no_grad():
            return {
                k: exact_match(model, loaded.tokenizer, r).accuracy for k, r in self.rows.items()
            }


def embedded_checkpoint(hub: Any, work: Path, compute_dtype: str) -> Path:
    """The embedded base as an NF4 checkpoint computing in ``compute_dtype``.

    float32 by default: on CPUs without bf16 matrix instructions (AVX2 only) a
    bf16 matmul is about 45x slower than float32, and training gives the same
    loss (an NF4 weight dequantizes exactly to either dtype).
    """
    from hub.base import build_base

    raw = Path(build_base(work / "base")["path"])
    quantizer = hub.quantizers["nf4"]
    model = quantizer.load(str(raw), {"compute_dtype": compute_dtype})
    quantizer.save(model, work / "base-nf4", {"created_by": "qlora-hub bench fed-accuracy"})
    return work / "base-nf4"


def make_shards(
    work: Path, rows: int, held_out: int, split: str = "first"
) -> tuple[dict[str, Path], dict]:
    """Each team's training file, the centralized union, and the held-out rows per team.

    ``first``: ``2 * rows`` words over the whole alphabet (``2 * held_out`` held
    out), dealt to the teams by first letter, so each gets about ``rows``.
    ``letters``: ``rows`` words per team over its own letters only.
    """
    from plugins.trainer.data import read_rows
    from plugins.trainer.synth import synthesize

    shards, tests = {}, {}
    if split == "first":
        paths = synthesize("upper", 2 * rows, work / "all", held_out=2 * held_out, seed=0)
        train = paths["train"].read_bytes().splitlines(keepends=True)
        test = [r for _, r in read_rows(paths["held_out"])]
        for team, letters in SPLIT.items():
            mine = [x for x in train if json.loads(x)["prompt"][0] in letters]
            shards[team] = work / f"{team}.jsonl"
            shards[team].write_bytes(b"".join(mine))
            tests[team] = [r for r in test if r["prompt"][0] in letters]
    else:
        for seed, (team, letters) in enumerate(SPLIT.items()):
            paths = synthesize(
                "upper", rows, work / team, held_out=held_out, seed=seed, letters=letters
            )
            shards[team] = paths["train"]
            tests[team] = [r for _, r in read_rows(paths["held_out"])]
    union = work / "union.jsonl"
    union.write_bytes(b"".join(shards[t].read_bytes() for t in SPLIT))
    return {**shards, "union": union}, tests


def _summary(scores: dict[str, float], sizes: dict[str, int]) -> dict[str, float]:
    union = sum(scores[t] * sizes[t] for t in scores) / sum(sizes.values())
    return {"union": round(union, 4), **{f"letters_{t}": round(v, 4) for t, v in scores.items()}}


def run_bench(hub: Any, work: Path, cfg: dict[str, Any], say: Any) -> dict[str, Any]:
    """Every row of the table: teams alone, centralized, federated per mode and round."""
    from plugins.trainer.fedrun import FedPlan, run_rounds
    from plugins.trainer.train import train_adapter

    base = (
        Path(cfg["base"]) if cfg["base"] else embedded_checkpoint(hub, work, cfg["compute_dtype"])
    )
    files, tests = make_shards(work / "data", cfg["rows"], cfg["held_out"], cfg["split"])
    sizes = {t: len(rows) for t, rows in tests.items()}
    scorer = Scorer(hub, base, tests)

    def score(adapter_dir: Path) -> dict[str, float]:
        return _summary(scorer(adapter_dir), sizes)

    opts = bench_options(cfg["steps"], cfg["lr"], cfg["batch_size"], cfg["r"])
    total = cfg["steps"] * cfg["rounds"]
    table, started = [], time.monotonic()

    def single(label: str, data: Path, steps: int) -> None:
        run = train_adapter(hub, base, data, work / label, name=label, log=None,
                            options=replace(opts, max_steps=steps, progress=False))  # fmt: skip
        table.append({"adapter": label, "steps": steps, **score(run.adapter_dir)})
        say(f"{label}: {table[-1]['union']:.3f} ({time.monotonic() - started:.0f} s)")

    for team in SPLIT:
        single(f"team {team} alone", files[team], total)
    single("centralized", files["union"], total * len(SPLIT))
    for mode in cfg["modes"]:

        def on_round(res: Any, mode: str = mode) -> None:
            row = {"adapter": f"{mode} round {res.round}", "mode": mode, "round": res.round}
            row.update(steps=cfg["steps"] * res.round, learning_rate=res.learning_rate)
            table.append({**row, **score(res.merged_dir)})
            say(f"{row['adapter']}: {table[-1]['union']:.3f} ({time.monotonic() - started:.0f} s)")

        plan = FedPlan(base, {t: files[t] for t in SPLIT}, cfg["rounds"], mode, opts,
                       aggregator=cfg["aggregator"], round_lr=cfg["round_lr"])  # fmt: skip
        run_rounds(hub, plan, work / mode, on_round)
    return {"rows": table, "seconds": round(time.monotonic() - started, 1)}


def plot(result: dict[str, Any], out: Path) -> None:
    """Union exact match per round for each mode, with teams alone and centralized as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    rows = result["rows"]
    for mode in result["config"]["modes"]:
        pts = [(r["round"], r["union"]) for r in rows if r.get("mode") == mode]
        ax.plot(*zip(*pts, strict=True), marker="o", label=f"federated {mode}")
    styles = {"centralized": ("black", "--"), "team a alone": ("C2", ":"),
              "team b alone": ("C3", ":")}  # fmt: skip
    for r in rows:
        if r["adapter"] in styles:
            color, line = styles[r["adapter"]]
            ax.axhline(r["union"], linestyle=line, color=color, label=r["adapter"])
    ax.set(xlabel="round", ylabel="exact match, union held-out set", ylim=(0, 1))
    ax.set_xticks(sorted({r["round"] for r in rows if "round" in r}))
    what = "words starting with" if result["config"]["split"] == "first" else "words over"
    ax.set_title(f"upper; team a: {what} a-m, team b: {what} n-z", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


@click.command("fed-accuracy")
@click.option("--base", type=click.Path(exists=True, path_type=Path), default=None,
              help="Base to train on [the embedded base, built in a temp directory].")  # fmt: skip
@click.option("--rounds", type=int, default=5, show_default=True)
@click.option("--steps", type=int, default=60, show_default=True, help="Steps per team per round.")
@click.option("--lr", type=float, default=5e-3, show_default=True)
@click.option(
    "--round-lr",
    type=click.Choice(["cosine", "restart"]),
    default="cosine",
    show_default=True,
    help="One cosine schedule over all rounds, or restart each round.",
)
@click.option(
    "--split",
    type=click.Choice(SPLITS),
    default="first",
    show_default=True,
    help="Teams by first letter of their words, or by all the letters they use.",
)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--compute-dtype", default="float32", show_default=True,
              help="NF4 compute dtype of the embedded base (float32: fast on CPUs without bf16).")  # fmt: skip
@click.option("--r", "r", type=int, default=16, show_default=True)
@click.option("--rows", type=int, default=2000, show_default=True, help="Training rows per team.")
@click.option("--held-out", type=int, default=100, show_default=True, help="Test rows per team.")
@click.option("--modes", default="ffa", show_default=True, help="ffa, fedavg or both (ffa,fedavg).")
@click.option("--aggregator", default="ckks", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write fed-accuracy.json and fed-accuracy.png here.")  # fmt: skip
@pass_state
def bench_fed_accuracy(state: CliState, base: Path | None, out: Path | None, **cfg: Any) -> None:
    """Teams alone vs centralized vs federated rounds on a split task (exact match, union test)."""
    import torch

    cfg.update(base=str(base) if base else None, modes=cfg["modes"].split(","))
    work = Path(tempfile.mkdtemp(prefix="fed-accuracy-"))
    threads = torch.get_num_threads()
    # one thread: on shared cores, OpenMP threads spin-waiting on each other cost 10x or more
    torch.set_num_threads(1)
    try:
        result = run_bench(state.hub, work, cfg, lambda m: click.echo(m, err=True))
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(work, ignore_errors=True)
    result = {"benchmark": "fed-accuracy", "task": "upper", "split": SPLIT, "config": cfg, **result}
    text = json.dumps(result, indent=2)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "fed-accuracy.json").write_text(text + "\n")
        plot(result, out / "fed-accuracy.png")
    click.echo(text)
