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

TASKS = ("upper", "reverse")
TEAM_OF = {"upper": "alpha", "reverse": "beta"}
PROMPT_WORDS = ("cat", "hub", "lora", "quant")


@dataclass(frozen=True)
class Recipe:
    """How much work each stage does; ``FAST`` is sized for CI, ``FULL`` for people."""

    train_rows: int
    held_out: int
    steps: int
    batch_size: int
    learning_rate: float


FULL = Recipe(train_rows=20000, held_out=200, steps=1200, batch_size=32, learning_rate=5e-3)
FAST = Recipe(train_rows=20000, held_out=100, steps=300, batch_size=32, learning_rate=8e-3)
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
        self.qh("quantize", str(base), "--out", str(ckpt))
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
        for team in ("alpha", "beta", "server"):
            self.qh("team", "create", team, "--no-passphrase")
        return {"teams": ["alpha", "beta", "server"]}

    def stage_train(self) -> dict[str, Any]:
        r = self.recipe
        procs = {}
        for task in TASKS:  # the two teams train at once, one core each, as on two machines
            data = self.work / "data" / task
            self.qh(
                "data",
                "synth",
                task,
                "--n",
                str(r.train_rows),
                "--held-out",
                str(r.held_out),
                "--out",
                str(data),
            )
            run = self.work / "runs" / task
            args = [
                "train",
                "--base",
                str(self.work / "base-nf4"),
                "--data",
                str(data / "train.jsonl"),
                "--adapter",
                task,
                "--team",
                TEAM_OF[task],
                "--out",
                str(run),
                "--quiet",
                "--freeze-a",
                "--a-seed",
                str(A_SEED),
                "--r",
                "16",
                "--alpha",
                "32",
                "--dropout",
                "0",
                "--optimizer",
                "adamw",
                "--lr",
                str(r.learning_rate),
                "--batch-size",
                str(r.batch_size),
                "--max-steps",
                str(r.steps),
                "--max-length",
                "32",
                "--eval-fraction",
                "0",
                "--logging-steps",
                "25",
                "--threads",
                "1",
            ]
            log = (self.work / f"train-{task}.log").open("wb")
            procs[task] = (self.spawn(args, log), log)
        out: dict[str, Any] = {}
        for task, (proc, log) in procs.items():
            code = proc.wait()
            log.close()
            if code != 0:
                tail = (self.work / f"train-{task}.log").read_text(errors="replace").strip()
                raise RuntimeError(f"training {task} exited {code}: {tail.splitlines()[-1:]}")
            acc = self.qh_json(
                "eval",
                f"{task}@latest",
                "--team",
                TEAM_OF[task],
                "--base",
                str(self.work / "base-nf4"),
                "--data",
                str(self.work / "data" / task / "held_out.jsonl"),
                "--json",
            )
            out[task] = {
                "team": TEAM_OF[task],
                "accuracy": acc["accuracy"],
                "run": str(self.work / "runs" / task),
            }
        return out

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
        for task in TASKS:
            owner = TEAM_OF[task]
            other = "beta" if owner == "alpha" else "alpha"
            for target in (other, "server"):
                self.qh("adapters", "share", task, "--with", target, "--team", owner)
                shares.append(f"{task}: {owner} -> {target}")
        listing = self.qh("adapters", "list", "--team", "server")
        return {"shares": shares, "server_sees": [t for t in TASKS if t in listing]}

    def stage_federated(self) -> dict[str, Any]:
        rnd = "demo-r1"
        self.qh(
            "fed",
            "init",
            "--round",
            rnd,
            "--teams",
            "alpha,beta",
            "--mode",
            "ffa",
            "--team",
            "alpha",
        )
        for task in TASKS:
            self.qh(
                "fed",
                "contribute",
                "--round",
                rnd,
                "--team",
                TEAM_OF[task],
                "--adapter",
                f"{task}@latest",
                "--weight",
                "0.5",
            )
        self.qh("fed", "aggregate", "--round", rnd)
        self.qh("fed", "finalize", "--round", rnd, "--name", "merged", "--team", "alpha")
        self.qh("adapters", "share", "merged", "--with", "server", "--team", "alpha")
        acc = {
            task: self.qh_json(
                "eval",
                "merged@latest",
                "--team",
                "alpha",
                "--base",
                str(self.work / "base-nf4"),
                "--data",
                str(self.work / "data" / task / "held_out.jsonl"),
                "--json",
            )["accuracy"]
            for task in TASKS
        }
        return {"round": rnd, "mode": "ffa", "weights": [0.5, 0.5], "merged_accuracy": acc}

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
            _wait_ready(url, proc, timeout=120)
            answers: dict[str, dict[str, str]] = {}
            headers = {"Authorization": f"Bearer {key}"}
            with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
                for model in ("base", *TASKS, "merged"):
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
        ("teams", "create teams alpha, beta and the server identity"),
        ("train", "alpha trains 'upper', beta trains 'reverse'"),
        ("share", "push to the vault, share across teams and with the server"),
        ("federated", "CKKS federated round (ffa) merges both adapters"),
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
        return ", ".join(
            f"{t} ({o[t]['team']}) {o[t]['accuracy']:.0%} held-out exact match" for t in TASKS
        )
    if stage.name == "federated":
        acc = o["merged_accuracy"]
        return "merged adapter: " + ", ".join(f"{t} {acc[t]:.0%}" for t in TASKS)
    if stage.name == "share":
        return f"{len(o['shares'])} shares; the server can read {', '.join(o['server_sees'])}"
    if stage.name == "serve":
        return f"{sum(len(v) for v in o['answers'].values())} answers from port {o['port']}"
    return ", ".join(o.get("teams", []))


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
