"""``qlora-hub bench gpu``: every GPU figure in one command and one JSON file.

Each section runs in its own process (``sys.executable -m ...``, so nothing needs the
``qlora-hub`` script or an installed distribution) under its own time limit, taken from
what is left of ``--budget-s``. A section that fails or runs out of time records its
status, its seconds and the last lines of its stderr, keeps whatever partial result it
wrote, and the next section runs. The JSON is rewritten after every section (a kill
keeps what finished) and its ``summary`` holds the ratios the targets name.

Sections, most valuable first: ``machine``, ``base`` (``base init --shape``), ``serve``
(engine: single1 / mixed8 / mixed32), ``decode`` (batch 1 vs plain transformers +
bitsandbytes vs the bandwidth bound), ``naive`` (PEFT ``adapter_names`` batch and a
``set_adapter`` server), ``quantize`` (NF4 bits/param, memory, pre-quantized vs
quantize-on-load), ``train`` (``bench train --device``). The core runs them by module
name only; it imports no plugin and not the server.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import click

from hub.errors import ValidationError

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("machine", "base", "serve", "decode", "naive", "quantize", "train")

PROFILES: dict[str, dict[str, Any]] = {
    # the 1b base on one H100: about 5 minutes of sections in all
    "full": {"clients": 32, "requests": 96, "max_tokens": 32, "prompt_tokens": 64, "rank": 16,
             "repeats": 3, "naive_requests": 16, "decode_tokens": 128, "copy_mib": 1024,
             "train_steps": 20, "train_batch": 16, "train_max_length": 256,
             "train_optimizers": "adamw,paged_adamw_32bit,paged_adamw_8bit"},
    # CPU smoke test on the embedded base: every section, every key, tiny numbers
    "tiny": {"clients": 4, "requests": 8, "max_tokens": 4, "prompt_tokens": 8, "rank": 8,
             "repeats": 1, "naive_requests": 4, "decode_tokens": 8, "copy_mib": 64,
             "train_steps": 2, "train_batch": 4, "train_max_length": 64,
             "train_optimizers": "adamw,paged_adamw_32bit"},
}  # fmt: skip

BUDGETS_S = {"machine": 60, "base": 240, "serve": 150, "decode": 100, "naive": 120,
             "quantize": 120, "train": 150}  # fmt: skip
"""Each section's own limit on a full run; every limit is also capped by what is left."""

MIN_SECTION_S = 20
"""A section is skipped (status ``skipped``) when less than this is left of the budget."""


def say(msg: str) -> None:
    """One progress line on stderr."""
    print(f"{time.strftime('%H:%M:%S')} bench gpu: {msg}", file=sys.stderr, flush=True)


def child_env(home: Path) -> dict[str, str]:
    """The environment of every section: unbuffered, this repository on the path, quiet libraries."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {
        **os.environ,
        "PYTHONPATH": path,
        "PYTHONUNBUFFERED": "1",
        "QLORA_HUB_HOME": str(home),
        "TRANSFORMERS_VERBOSITY": "error",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def run_child(
    name: str, argv: list[str], env: dict[str, str], limit_s: float
) -> tuple[str, float, str, str]:
    """Run ``python argv`` with a time limit; stderr echoed line by line with the section name.

    Returns ``(status, seconds, stdout, stderr tail)``; status ``ok``, ``error`` (exit
    status named) or ``timeout`` (the process group is killed).
    """
    tail: collections.deque[str] = collections.deque(maxlen=25)
    start = time.monotonic()
    _SIGTERM["spawning"] = True  # a SIGTERM now waits until proc exists (then it kills it)
    proc = subprocess.Popen(
        [sys.executable, *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    out: list[str] = []

    def pump_err() -> None:
        for line in proc.stderr:
            tail.append(line.rstrip())
            print(f"  [{name}] {line.rstrip()}", file=sys.stderr, flush=True)

    def pump_out() -> None:
        out.extend(proc.stdout)

    threads = [threading.Thread(target=f, daemon=True) for f in (pump_err, pump_out)]
    for t in threads:
        t.start()
    try:
        _SIGTERM["spawning"] = False
        if _SIGTERM.pop("pending", False):
            raise Terminated(f"signal {int(signal.SIGTERM)}")
        code = proc.wait(timeout=limit_s)
        status = "ok" if code == 0 else f"error (exit status {code})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        status = "timeout"
    except BaseException:  # interrupted or terminated: no section outlives the run
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    for t in threads:
        t.join(timeout=5)
    return status, time.monotonic() - start, "".join(out), "\n".join(tail)


def section_argv(name: str, ctx: dict[str, Any], result_path: Path) -> list[str] | None:
    """The command line of section ``name`` (``None``: handled here, no child)."""
    base, device, prof = str(ctx["base"]), ctx["device"], ctx["profile"]
    if name == "machine":
        return ["-m", "hub.gpubench_machine", str(result_path)]
    if name == "base":
        return ["-m", "hub", "base", "init", "--shape", ctx["shape"], "--out", base]
    if name in ("serve", "decode", "naive"):
        return ["-m", "server.bench_gpu", name, base, device, json.dumps(prof), str(result_path)]
    if name == "quantize":
        work = ctx["workdir"] / "quantize"
        work.mkdir(exist_ok=True)
        return ["-m", "plugins.nf4.bench_device", base, str(work), device, str(result_path)]
    if name == "train":  # the quantize section's checkpoint, when it wrote one
        ckpt = ctx["workdir"] / "quantize" / "nf4-checkpoint"
        source = str(ckpt) if (ckpt / "qlora-hub-quant.json").is_file() else base
        return ["-m", "hub", "bench", "train", "--base", source, "--device", device, "--json",
                "--optimizers", prof["train_optimizers"], "--repeats", "1",
                "--steps", str(prof["train_steps"]), "--batch-size", str(prof["train_batch"]),
                "--max-length", str(prof["train_max_length"]),
                "--gradient-checkpointing"]  # fmt: skip
    raise ValidationError(f"unknown section {name!r}: choose from {', '.join(SECTIONS)}")


def run_section(name: str, ctx: dict[str, Any], limit_s: float) -> dict[str, Any]:
    """One section: its child, its status, seconds, result (partial too) and error tail."""
    result_path = ctx["workdir"] / f"{name}.json"
    result_path.unlink(missing_ok=True)
    argv = section_argv(name, ctx, result_path)
    say(f"section {name} (limit {limit_s:.0f} s)")
    status, seconds, stdout, tail = run_child(name, argv, ctx["env"], limit_s)
    entry: dict[str, Any] = {"status": status, "seconds": round(seconds, 1),
                             "limit_s": round(limit_s)}  # fmt: skip
    result = _read_result(result_path, entry)
    if result is None and stdout.strip():
        result = _json_in(stdout)
    if name == "base":
        result = {"shape": ctx["shape"], "init_seconds": round(seconds, 1),
                  "output": stdout.strip()[-500:]}  # fmt: skip
    entry["result"] = result
    if status != "ok":
        entry["error"] = tail
    say(f"section {name}: {status} in {seconds:.1f} s")
    return entry


def _read_result(path: Path, entry: dict[str, Any]) -> Any:
    """The section's result file (partial if it was cut short), or ``None``."""
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError) as exc:
        entry["error_result_file"] = str(exc)
        return None


class Terminated(Exception):
    """SIGTERM reached the run (e.g. ``timeout``): the running section is killed and recorded."""


_SIGTERM: dict[str, bool] = {"spawning": False}


def _on_sigterm(signum: int, frame: Any) -> None:
    if _SIGTERM["spawning"]:
        _SIGTERM["pending"] = True
        return
    raise Terminated(f"signal {signum}")


def _json_in(stdout: str) -> Any:
    """The JSON document a ``--json`` command printed (the last ``{`` line onwards)."""
    lines = stdout.splitlines()
    for i in range(len(lines)):
        if lines[i].startswith("{"):
            try:
                return json.loads("\n".join(lines[i:]))
            except json.JSONDecodeError:
                continue
    return {"stdout_tail": stdout[-2000:]}


def _get(report: dict[str, Any], *keys: str) -> Any:
    node: Any = report["sections"]
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _ratio(a: Any, b: Any) -> float | None:
    return (
        round(a / b, 3) if isinstance(a, int | float) and isinstance(b, int | float) and b else None
    )


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """The ratios the targets name, from whatever sections finished (``None``: not measured)."""
    tps = "tokens_per_s"
    single = _get(report, "serve", "result", "single1", tps)
    mixed8 = _get(report, "serve", "result", "mixed8", tps)
    mixed32 = _get(report, "serve", "result", "mixed32", tps)
    naive = _get(report, "naive", "result", "naive8", tps)
    peft = _get(report, "naive", "result", "peft_adapter_names_static_batch", tps)
    eng = _get(report, "decode", "result", "engine_base", "decode_tokens_per_s")
    eng_lora = _get(report, "decode", "result", "engine_adapter", "decode_tokens_per_s")
    plain = _get(report, "decode", "result", "plain_transformers_bnb", "decode_tokens_per_s")
    bound = _get(report, "decode", "result", "bound_tokens_per_s")
    return {
        "mixed32_vs_single1": _ratio(mixed32, single),
        "mixed8_vs_single1": _ratio(mixed8, single),
        "mixed8_vs_naive8": _ratio(mixed8, naive),
        "mixed32_vs_naive8": _ratio(mixed32, naive),
        "mixed8_vs_peft_adapter_names": _ratio(mixed8, peft),
        "decode_b1_engine_vs_plain_bnb": _ratio(eng, plain),
        "decode_b1_engine_adapter_vs_plain_bnb": _ratio(eng_lora, plain),
        "decode_b1_engine_fraction_of_bound": _ratio(eng, bound),
        "quantize_bits_per_param": _get(
            report, "quantize", "result", "footprint", "quantized_bits_per_param"
        ),
        "load_pre_quantized_speedup": _get(
            report, "quantize", "result", "ratio_load_speedup_pre_quantized"
        ),
        "train_tokens_per_s": {
            k: v.get("tokens_per_s")
            for k, v in (_get(report, "train", "result", "runs") or {}).items()
        },
        "train_peak_over_estimate": {
            k: v.get("peak_over_estimate")
            for k, v in (_get(report, "train", "result", "runs") or {}).items()
        },
        "train_ratios": _get(report, "train", "result", "ratios"),
        "targets": {
            "mixed32_vs_single1": 0.8,
            "mixed8_vs_naive8": 3.0,
            "decode_b1_engine_vs_plain_bnb": 1.0,
        },  # fmt: skip
    }


def write_report(report: dict[str, Any], out: Path) -> None:
    """Rewrite ``out`` atomically with the summary recomputed."""
    report["summary"] = summarize(report)
    tmp = out.with_name(out.name + ".partial")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    os.replace(tmp, out)


def run_gpu_bench(
    out: Path,
    *,
    device: str,
    shape: str,
    profile: str,
    budget_s: float,
    sections: list[str],
    base: Path | None,
    workdir: Path,
) -> dict[str, Any]:
    """Run ``sections`` in order under ``budget_s``; the report is in ``out`` after each."""
    started = time.monotonic()
    scale = 1.0 if profile == "full" else 4.0  # a tiny run on a busy CPU gets roomier limits
    ctx = {"device": device, "shape": shape, "profile": PROFILES[profile], "workdir": workdir,
           "base": base or workdir / "base", "env": child_env(workdir / "home")}  # fmt: skip
    report: dict[str, Any] = {
        "command": "qlora-hub bench gpu",
        "argv": sys.argv[1:],
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": device, "shape": shape, "profile": profile, "settings": PROFILES[profile],
        "budget_s": budget_s, "sections": {},
    }  # fmt: skip
    if base is not None:
        sections = [s for s in sections if s != "base"]
        report["base"] = str(base)
    for name in sections:
        left = budget_s - (time.monotonic() - started)
        if left < MIN_SECTION_S:
            report["sections"][name] = {
                "status": "skipped",
                "error": f"{max(left, 0):.0f} s of the budget left",
            }
        else:
            try:
                entry = run_section(name, ctx, min(BUDGETS_S[name] * scale, left))
            except (KeyboardInterrupt, Terminated) as exc:
                result = _read_result(ctx["workdir"] / f"{name}.json", {})
                report["sections"][name] = {
                    "status": "killed",
                    "error": repr(exc),
                    "result": result,
                }
                report["interrupted_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                write_report(report, out)
                raise
            report["sections"][name] = entry
        write_report(report, out)
        if name == "base" and report["sections"][name]["status"] != "ok":
            say("no base: the remaining sections cannot run")
            break
    report["seconds"] = round(time.monotonic() - started, 1)
    report["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_report(report, out)
    return report


@click.command("gpu")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The JSON file.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--shape", default="1b", show_default=True, help="Base shape (base init --shape).")
@click.option(
    "--profile",
    type=click.Choice(sorted(PROFILES)),
    default=None,
    help="Sizes of the runs [default: full, tiny for the embedded shape].",
)
@click.option("--budget-s", type=float, default=420, show_default=True, help="Whole-run limit.")
@click.option(
    "--sections", default=",".join(SECTIONS), show_default=True, help="Comma-separated, in order."
)
@click.option(
    "--base",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=None,
    help="Use this HF base directory instead of building one.",
)
@click.option("--workdir", type=click.Path(path_type=Path), default=None, help="Kept if given.")
def bench_gpu_cmd(
    out: Path,
    device: str,
    shape: str,
    profile: str | None,
    budget_s: float,
    sections: str,
    base: Path | None,
    workdir: Path | None,
) -> None:
    """Every GPU figure in one run and one JSON file: serving, decode, quantize, load, train."""
    from hub.base import SHAPES

    chosen = [s.strip() for s in sections.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        raise ValidationError(f"unknown section {unknown[0]!r}: choose from {', '.join(SECTIONS)}")
    if shape not in SHAPES:
        raise ValidationError(f"unknown base shape {shape!r}: choose one of {', '.join(SHAPES)}")
    if device == "auto":
        device = _auto_device()
    profile = profile or ("tiny" if shape == "embedded" else "full")
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _on_sigterm)
    with tempfile.TemporaryDirectory(prefix="qlora-hub-gpubench-") as tmp:
        work = (workdir or Path(tmp)).absolute()
        work.mkdir(parents=True, exist_ok=True)
        try:
            report = run_gpu_bench(out, device=device, shape=shape, profile=profile,
                                   budget_s=budget_s, sections=chosen, base=base, workdir=work)  # fmt: skip
        except Terminated:
            click.echo(f"terminated: what finished is in {out}", err=True)
            sys.exit(143)
    statuses = ", ".join(f"{k} {v['status']}" for k, v in report["sections"].items())
    click.echo(f"wrote {out} in {report['seconds']} s: {statuses}")
    click.echo(json.dumps(report["summary"], indent=2))


def _auto_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
