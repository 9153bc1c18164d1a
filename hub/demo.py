"""``qlora-hub demo``: the whole pipeline on the embedded base, as a scripted CLI session.

Every stage runs real ``qlora-hub`` commands in process (the server in a
subprocess on a free loopback port), exactly as a user would type them, so the
demo is also the project's end-to-end smoke test. It imports no plugin: it
only knows the command line. Results go to ``<workdir>/summary.json`` and an
HTML report, ``<workdir>/report.html``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from hub.errors import HubError

TASK = "upper"
LETTERS = {"alpha": "abcdefghijklm", "beta": "nopqrstuvwxyz"}
"""Each team holds the words that begin with its half of the alphabet: disjoint,
differently distributed halves of one task (every letter still occurs inside
both teams' words)."""
TEAMS = tuple(LETTERS)
ADAPTER = {team: f"{team}-upper" for team in TEAMS}
FED_ADAPTER = {team: f"{team}-fed" for team in TEAMS}
KEY_HOLDER = "hold"
PROMPT_WORDS = ("cat", "hub", "lora", "quant")


@dataclass(frozen=True)
class Recipe:
    """How much work each stage does; ``FAST`` is sized for CI, ``FULL`` for people.

    ``train_rows`` and ``held_out`` count both teams' words together (dealt by
    first letter, about half each). Each team trains alone for
    ``rounds * round_steps`` steps (the baseline); the federated stage spends
    the same steps per team: ``rounds`` rounds of ``round_steps``, each from
    the previous merge, with one cosine learning-rate schedule over the rounds
    (round k of R at ``learning_rate * (1 + cos(pi * (k - 1/2) / R)) / 2``).
    """

    train_rows: int
    held_out: int
    batch_size: int
    learning_rate: float
    rounds: int
    round_steps: int

    @property
    def steps(self) -> int:
        """Steps per team: the alone baseline's, and the federated rounds' together."""
        return self.rounds * self.round_steps

    def round_lr(self, k: int) -> float:
        """Learning rate of round ``k`` (1-based): one cosine schedule over the rounds."""
        return self.learning_rate * (1 + math.cos(math.pi * (k - 0.5) / self.rounds)) / 2


FULL = Recipe(
    train_rows=8000, held_out=400, batch_size=32, learning_rate=5e-3, rounds=5, round_steps=100
)
FAST = Recipe(
    train_rows=4000, held_out=200, batch_size=32, learning_rate=5e-3, rounds=5, round_steps=60
)
A_SEED = 20240607  # both teams freeze A at this seed, so the ffa merge is exact


class DemoStageError(HubError):
    """A demo stage failed; the message names the stage."""


@dataclass
class Stage:
    name: str
    title: str
    seconds: float = 0.0
    outcome: dict[str, Any] = field(default_factory=dict)


class Demo:
    """Runs the stages in order against a fresh home inside ``workdir``."""

    def __init__(self, workdir: Path, recipe: Recipe, echo: Callable[[str], None]) -> None:
        from hub.cli import make_cli
        from hub.plugins import Hub

        self.work = workdir
        self.home = workdir / "home"
        self.recipe = recipe
        self.echo = echo
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the demo draws its own progress
        self.hub = Hub()
        self.cli = make_cli(self.hub)
        self.stages: list[Stage] = []

    # -- running commands -------------------------------------------------------------
    def qh(self, *args: str) -> str:
        """Run ``qlora-hub --home HOME ARGS`` in process; return what it printed."""
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            self.cli.main(
                ["--home", str(self.home), *args],
                prog_name="qlora-hub",
                standalone_mode=False,
                obj=self.hub,
            )
        return buf.getvalue()

    def qh_json(self, *args: str) -> Any:
        return json.loads(self.qh(*args))

    # -- stages -----------------------------------------------------------------------
    def stage_base(self) -> dict[str, Any]:
        base, ckpt = self.work / "base", self.work / "base-nf4"
        self.qh("base", "init", "--out", str(base))
        self.qh("quantize", str(base), "--out", str(ckpt), "--compute-dtype", compute_dtype())
        report = self.qh_json("quantize", str(base), "--report", "--json")
        return {
            "bits_per_param_quantized": report["quantized_total"]["nf4"]["bits_per_param"],
            "bits_per_param_model": report["model_total"]["nf4"]["bits_per_param"],
            "format_limit_bits": report["format_limit_bits"],
            "nf4_rel_mse": report["quantized_total"]["nf4"]["rel_mse"],
            "checkpoint_bytes": sum(p.stat().st_size for p in ckpt.glob("*.safetensors")),
            "bf16_bytes": sum(p.stat().st_size for p in base.glob("*.safetensors")),
        }

    def stage_teams(self) -> dict[str, Any]:
        teams = [*TEAMS, KEY_HOLDER, "server"]
        for team in teams:
            self.qh("team", "create", team, "--no-passphrase")
        return {"teams": teams}

    def train_args(self, team: str, k: int = 0, init: str | None = None) -> list[str]:
        """``qlora-hub train`` for ``team``'s shard (frozen A at the shared seed).

        ``k == 0``: the team alone, all its steps in one run (cosine schedule);
        ``k >= 1``: federated round ``k``, at that round's learning rate.
        """
        r = self.recipe
        name = ADAPTER[team] if k == 0 else FED_ADAPTER[team]
        args = ["train", "--base", str(self.work / "base-nf4"), "--adapter", name]
        args += ["--data", str(self.work / "data" / team / "train.jsonl"), "--team", team]
        args += ["--out", str(self.work / "runs" / (f"{team}-round{k}" if k else f"{team}-alone"))]
        args += ["--quiet", "--freeze-a", "--a-seed", str(A_SEED), "--r", "16", "--alpha", "32"]
        args += ["--dropout", "0", "--optimizer", "adamw", "--batch-size", str(r.batch_size)]
        if k == 0:
            args += ["--lr", str(r.learning_rate), "--max-steps", str(r.steps)]
        else:  # a new batch order each round, as the epochs of one long run
            args += ["--lr", f"{r.round_lr(k):.6g}", "--lr-scheduler", "constant_with_warmup"]
            args += ["--max-steps", str(r.round_steps), "--seed", str(k - 1)]
        args += ["--max-length", "32", "--eval-fraction", "0", "--logging-steps", "25"]
        args += ["--threads", "1"]
        return [*args, "--init-adapter", init] if init else args

    def train_teams(self, k: int = 0, init: str | None = None) -> dict[str, str]:
        """Both teams train at once, one core each, as on two machines; returns run dirs."""
        procs = {}
        for team in TEAMS:
            args = self.train_args(team, k, init)
            log = (self.work / f"train-{team}.log").open("ab")
            procs[team] = (self.spawn(args, log), log, args[args.index("--out") + 1])
        for team, (proc, log, _) in procs.items():
            code = proc.wait()
            log.close()
            if code != 0:
                tail = (self.work / f"train-{team}.log").read_text(errors="replace").strip()
                raise RuntimeError(f"training {team} exited {code}: {tail.splitlines()[-1:]}")
        return {team: run for team, (_, _, run) in procs.items()}

    def union_accuracy(self, adapter: str, team: str) -> float:
        """Greedy exact match of ``adapter`` on both teams' held-out words."""
        return self.qh_json(
            "eval",
            adapter,
            "--team",
            team,
            "--base",
            str(self.work / "base-nf4"),
            "--data",
            str(self.work / "data" / "union_held_out.jsonl"),
            "--json",
        )["accuracy"]

    def stage_train(self) -> dict[str, Any]:
        r = self.recipe
        data = self.work / "data"
        self.qh("data", "synth", TASK, "--n", str(r.train_rows), "--held-out", str(r.held_out),
                "--seed", "0", "--out", str(data / "all"))  # fmt: skip
        lines = (data / "all" / "train.jsonl").read_bytes().splitlines(keepends=True)
        for team, letters in LETTERS.items():
            (data / team).mkdir(parents=True)
            mine = [x for x in lines if json.loads(x)["prompt"][0] in letters]
            (data / team / "train.jsonl").write_bytes(b"".join(mine))
        (data / "union_held_out.jsonl").write_bytes((data / "all" / "held_out.jsonl").read_bytes())
        runs = self.train_teams()
        return {
            team: {
                "adapter": ADAPTER[team],
                "letters": LETTERS[team],
                "rows": len((data / team / "train.jsonl").read_bytes().splitlines()),
                "steps": r.steps,
                "accuracy": self.union_accuracy(f"{ADAPTER[team]}@latest", team),
                "run": runs[team],
            }
            for team in TEAMS
        }

    def spawn(self, args: list[str], log: Any) -> subprocess.Popen:
        """Start ``qlora-hub --home HOME ARGS`` in a child process writing to ``log``."""
        env = {**os.environ, "QLORA_HUB_HOME": str(self.home), "TRANSFORMERS_VERBOSITY": "error"}
        return subprocess.Popen(
            [sys.executable, "-m", "hub", "--home", str(self.home), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def stage_share(self) -> dict[str, Any]:
        shares = []
        for owner in TEAMS:
            other = next(t for t in TEAMS if t != owner)
            for target in (other, "server"):
                self.qh("adapters", "share", ADAPTER[owner], "--with", target, "--team", owner)
                shares.append(f"{ADAPTER[owner]}: {owner} -> {target}")
        listing = self.qh("adapters", "list", "--team", "server")
        return {"shares": shares, "server_sees": [a for a in ADAPTER.values() if a in listing]}

    def fed_round(self, k: int) -> float:
        """Round ``k``: init (chained to merged@k-1), contribute, aggregate, finalize, eval."""
        rnd = f"demo-r{k}"
        init = ["fed", "init", "--round", rnd, "--teams", ",".join(TEAMS), "--mode", "ffa"]
        init += ["--team", KEY_HOLDER]
        self.qh(*init, *(["--start", f"merged@{k - 1}"] if k > 1 else []))
        for team in TEAMS:
            self.qh("fed", "contribute", "--round", rnd, "--team", team,
                    "--key-holder", KEY_HOLDER, "--adapter", f"{FED_ADAPTER[team]}@latest")  # fmt: skip
        self.qh("fed", "aggregate", "--round", rnd, "--key-holder", KEY_HOLDER)
        self.qh("fed", "finalize", "--round", rnd, "--name", "merged", "--team", KEY_HOLDER)
        return self.union_accuracy(f"merged@{k}", TEAMS[0])

    def stage_federated(self) -> dict[str, Any]:
        r, rounds = self.recipe, []
        for k in range(1, r.rounds + 1):
            self.train_teams(k, init=f"merged@{k - 1}" if k > 1 else None)
            rounds.append(
                {
                    "round": k,
                    "steps_per_team": k * r.round_steps,
                    "learning_rate": float(f"{r.round_lr(k):.6g}"),
                    "accuracy": self.fed_round(k),
                }
            )
        self.qh("adapters", "share", "merged", "--with", "server", "--team", KEY_HOLDER)
        return {
            "task": TASK,
            "mode": "ffa",
            "key_holder": KEY_HOLDER,
            "weights": "training examples (FedAvg mean)",
            "rounds": rounds,
            "merged_accuracy": rounds[-1]["accuracy"],
        }

    def stage_serve(self) -> dict[str, Any]:
        import httpx

        key = self.qh("team", "api-key", "create", "alpha").strip().splitlines()[-1]
        port = _free_port()
        log = (self.work / "server.log").open("wb")
        proc = self.spawn(
            [
                "serve",
                "--base",
                str(self.work / "base-nf4"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            log,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(url, proc, timeout=300)  # a busy machine loads slowly
            answers: dict[str, dict[str, str]] = {}
            headers = {"Authorization": f"Bearer {key}"}
            with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
                for model in ("base", *ADAPTER.values(), "merged"):
                    answers[model] = {}
                    for word in PROMPT_WORDS:
                        resp = client.post(
                            "/v1/completions",
                            json={
                                "model": model,
                                "prompt": f"{word}:",
                                "max_tokens": 12,
                                "temperature": 0,
                                "stop": ["\n"],
                            },
                        )
                        resp.raise_for_status()
                        answers[model][word] = resp.json()["choices"][0]["text"]
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
        return {"port": port, "answers": answers}

    # -- driver -----------------------------------------------------------------------
    PLAN = (
        ("base", "build the base, quantize to NF4 + double quant"),
        ("teams", "create teams alpha, beta, the key holder and the server identity"),
        ("train", "alpha trains 'upper' alone on words starting a-m, beta on words starting n-z"),
        ("share", "push to the vault, share across teams and with the server"),
        ("federated", "chained CKKS federated rounds (ffa): train from the merge, merge again"),
        ("serve", "serve base + adapters on loopback, one request per adapter"),
    )

    def run(self) -> dict[str, Any]:
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        columns = (
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, transient=False) as progress:
            bar = progress.add_task("demo", total=len(self.PLAN))
            for name, title in self.PLAN:
                stage = Stage(name, title)
                progress.update(bar, description=f"[bold]{name}[/]: {title}")
                start = time.perf_counter()
                try:
                    stage.outcome = getattr(self, f"stage_{name}")()
                except (
                    HubError,
                    click.ClickException,
                    OSError,
                    RuntimeError,
                    ValueError,
                    KeyError,
                    subprocess.SubprocessError,
                ) as exc:
                    raise DemoStageError(f"demo stage '{name}' failed: {exc}") from exc
                stage.seconds = time.perf_counter() - start
                self.stages.append(stage)
                progress.console.print(
                    f"[green]✓[/] {name}: {_describe(stage)} ({stage.seconds:.1f} s)"
                )
                progress.advance(bar)
        summary = {
            "workdir": str(self.work),
            "recipe": self.recipe.__dict__,
            "stages": {s.name: {"seconds": round(s.seconds, 2), **s.outcome} for s in self.stages},
            "total_seconds": round(sum(s.seconds for s in self.stages), 2),
        }
        (self.work / "summary.json").write_text(json.dumps(summary, indent=2))
        from hub.demo_report import write_report

        write_report(self.work, summary)
        return summary


def _describe(stage: Stage) -> str:
    o = stage.outcome
    if stage.name == "base":
        return (
            f"{o['bits_per_param_quantized']:.3f} bits/param on quantized weights, "
            f"checkpoint {o['checkpoint_bytes'] / 1e6:.2f} MB vs bf16 {o['bf16_bytes'] / 1e6:.2f} MB"
        )
    if stage.name == "train":
        alone = ", ".join(f"{t} alone {o[t]['accuracy']:.0%}" for t in TEAMS)
        return f"upper, exact match on the union held-out words: {alone}"
    if stage.name == "federated":
        per_round = ", ".join(f"round {x['round']} {x['accuracy']:.0%}" for x in o["rounds"])
        return f"merged adapter on the union held-out words: {per_round}"
    if stage.name == "share":
        return f"{len(o['shares'])} shares; the server can read {', '.join(o['server_sees'])}"
    if stage.name == "serve":
        return f"{sum(len(v) for v in o['answers'].values())} answers from port {o['port']}"
    return ", ".join(o.get("teams", []))


def compute_dtype() -> str:
    """bfloat16 on a GPU; float32 on CPU, where many CPUs (AVX2 only) run a bf16 matmul
    about 45x slower than float32 (the NF4 weights and the results are the same)."""
    import torch

    return "bfloat16" if torch.cuda.is_available() else "float32"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} (see server.log)")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"server not ready after {timeout:.0f} s (see server.log)")


@click.command("demo")
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where to work [default: a new temporary directory].",
)
@click.option("--fast", is_flag=True, help="Smaller data and fewer steps (CI smoke test).")
def demo_cmd(workdir: Path | None, fast: bool) -> dict[str, Any]:
    """Run the whole pipeline on the embedded base: quantize, train, vault, federated merge, serve."""
    from rich.console import Console
    from rich.table import Table

    workdir = workdir or Path(tempfile.mkdtemp(prefix="qlora-hub-demo-"))
    if workdir.exists() and any(workdir.iterdir()):
        raise DemoStageError(f"{workdir} is not empty: pass an empty or new --workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    console = Console()
    console.print(f"qlora-hub demo in {workdir} ({'fast' if fast else 'full'} recipe)")
    summary = Demo(workdir, FAST if fast else FULL, console.print).run()

    answers = summary["stages"]["serve"]["answers"]
    table = Table(title="served answers (greedy, one request per adapter and prompt)")
    table.add_column("prompt")
    for model in answers:
        table.add_column(model)
    for word in PROMPT_WORDS:
        table.add_row(f"{word}:", *[repr(answers[m][word]) for m in answers])
    console.print(table)
    console.print(f"total {summary['total_seconds']:.0f} s; report: {workdir / 'report.html'}")
    return summary
