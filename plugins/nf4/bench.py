"""``qlora-hub bench quant``: quantize-on-load vs pre-quantized load, bits/param, error.

Each load runs in a fresh interpreter (``python -m plugins.nf4.bench MODE PATH
[PRIMER]``) so its peak RSS is its own; the RSS after the imports is the
Python/torch baseline. Times are the load alone (imports excluded); figures
are medians over ``--repeats``. "cold" is the first load in a fresh process,
"primed first" the first load of the base in a process that loaded another,
tiny model before (so the libraries' one-time set-up is behind it), "warm"
the median of the next ``WARM_LOADS`` loads (see :func:`probe`).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

MODES = ("quantize_on_load", "pre_quantized")


def _status_bytes(field: str) -> int:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


WARM_LOADS = 3


def _rss_by_mapping() -> dict[str, int]:
    """Resident bytes per mapped file (``[anon]`` for anonymous memory and the heap)."""
    out: dict[str, int] = {}
    name = "[anon]"
    for line in Path("/proc/self/smaps").read_text().splitlines():
        parts = line.split()
        if parts and not parts[0].endswith(":"):  # a mapping's header line
            path = parts[5] if len(parts) > 5 else ""
            name = path if path.startswith("/") else "[anon]"
        elif parts[:1] == ["Rss:"]:
            out[name] = out.get(name, 0) + int(parts[1]) * 1024
    return out


def _breakdown(before: dict[str, int], after: dict[str, int], checkpoint: str) -> dict[str, int]:
    """Where a load's new resident bytes went: the checkpoint's own file, library code, the rest."""
    grown = {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)}
    weights = sum(v for k, v in grown.items() if k.startswith(checkpoint))
    code = sum(v for k, v in grown.items() if ".so" in Path(k).name)
    return {"checkpoint_files": weights, "library_code": code,
            "anonymous_and_other": sum(grown.values()) - weights - code}  # fmt: skip


def _touch(model: Any) -> None:
    """Read every byte of the model's tensors, as a first forward pass would.

    Weights read through a memory map page in lazily, so right after a load the
    RSS may not hold them yet. Hashing reads each tensor's memory in place (a
    torch reduction would allocate temporaries).
    """
    import hashlib

    import torch

    for tensor in [*model.parameters(), *model.buffers()]:
        hashlib.blake2b(tensor.detach().reshape(-1).view(torch.uint8).numpy()).digest()


def probe(mode: str, path: str, primer: str | None = None) -> dict[str, Any]:
    """Load ``path`` 1 + ``WARM_LOADS`` times in this process and measure each load's peak RSS.

    The libraries and the modules both load paths use are imported first, so
    the figures are the load itself; the RSS after those imports is the
    Python/torch baseline, and the peak is reset to it before loading.

    The first ("cold") load also pays the libraries' one-time initialisation
    in this process (code pages of libtorch faulted in, lazily built tables);
    its growth right after the load is broken down by mapping, and its peak is
    read again once every weight is resident (:func:`_touch`). The later
    ("warm") loads each free the previous model first and touch the new one;
    their median is the steady-state cost of a load.

    With ``primer`` (another model, loaded the same way), the primer is loaded,
    touched and freed before the baseline is taken: the libraries' one-time
    set-up is then part of the baseline, and the first load of ``path`` costs
    only what this checkpoint costs, as in a process that loaded any model before.
    """
    import gc
    import time
    import warnings

    warnings.simplefilter("ignore")
    import accelerate  # noqa: F401
    import bitsandbytes.nn  # noqa: F401
    import torch  # noqa: F401
    import transformers
    import transformers.integrations.bitsandbytes  # noqa: F401
    import transformers.quantizers  # noqa: F401
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from plugins.nf4.quantizers import builtin_quantizers

    transformers.logging.disable_progress_bar()
    # Import the architecture's modeling module (the mapping imports it on lookup).
    MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.from_pretrained(path))]
    nf4 = {q.name: q for q in builtin_quantizers()}["nf4"]

    def load(target: str = path) -> Any:
        if mode == "quantize_on_load":
            return nf4.load(target)
        return nf4.load_quantized(Path(target))

    if primer is not None:
        _touch(load(primer))  # freed at once: only the libraries' set-up stays
        gc.collect()
    mapped = _rss_by_mapping()
    baseline = _status_bytes("VmRSS")
    reset = _reset_peak_rss()
    start = time.perf_counter()
    model = load()
    cold = time.perf_counter() - start
    peak = _status_bytes("VmHWM")
    breakdown = _breakdown(mapped, _rss_by_mapping(), str(Path(path).resolve()))
    _touch(model)
    resident_peak = _status_bytes("VmHWM")
    warm_seconds, warm_over, held = [], [], [model]
    del model
    for _ in range(WARM_LOADS):
        held.clear()  # the previous model is freed before each warm load
        gc.collect()
        warm_baseline = _status_bytes("VmRSS")
        _reset_peak_rss()
        start = time.perf_counter()
        held.append(load())
        warm_seconds.append(time.perf_counter() - start)
        _touch(held[-1])  # after the clock stops: reading the weights is not loading them
        warm_over.append(_status_bytes("VmHWM") - warm_baseline)
    return {"cold_seconds": cold, "warm_seconds": statistics.median(warm_seconds),
            "baseline_rss": baseline, "peak_rss": peak, "cold_breakdown": breakdown,
            "resident_peak_rss": resident_peak,
            "warm_over_baseline": statistics.median(warm_over),
            "peak_reset": reset}  # fmt: skip


def _run_probe(mode: str, path: Path, primer: Path | None = None) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "plugins.nf4.bench", mode, str(path)]
        + ([str(primer)] if primer else []),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise click.ClickException(f"bench probe {mode} failed: {proc.stderr.strip()[-400:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _bits(base: Path) -> dict[str, Any]:
    """Measured bits/param of the quantized linear weights vs the format limit, DQ on and off."""
    from plugins.nf4.footprint import nf4_limit_bits
    from plugins.nf4.quantizers import builtin_quantizers

    nf4 = {q.name: q for q in builtin_quantizers()}["nf4"]
    out = {}
    for label, dq in (("double_quant", True), ("no_double_quant", False)):
        measured = nf4.footprint(nf4.load(base, {"double_quant": dq}))["quantized_bits_per_param"]
        limit = nf4_limit_bits(dq)
        out[label] = {
            "measured": measured,
            "limit": limit,
            "deviation_pct": 100 * (measured - limit) / limit,
        }
    return out


def _write_primer(out: Path) -> dict[str, Path]:
    """A one-layer 64-wide random Llama, as a model directory and as an nf4 checkpoint.

    The primed probes load it first (see :func:`probe`); its shapes differ from
    every base, so nothing the bench measures is cached by it.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from plugins.nf4.quantizers import builtin_quantizers

    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1)  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out / "model")
    nf4 = {q.name: q for q in builtin_quantizers()}["nf4"]
    nf4.save(nf4.load(out / "model"), out / "nf4-checkpoint", {"created_by": "bench primer"})
    return {"quantize_on_load": out / "model", "pre_quantized": out / "nf4-checkpoint"}


def run_bench(base: Path, workdir: Path, repeats: int) -> dict[str, Any]:
    """Measure everything ``bench quant`` reports; ``workdir`` receives the checkpoint."""
    import os
    import platform

    import torch
    from rich.progress import Progress

    from plugins.nf4.checkpoint import library_versions
    from plugins.nf4.quantizers import builtin_quantizers
    from plugins.nf4.report import build_report

    nf4 = {q.name: q for q in builtin_quantizers()}["nf4"]
    ckpt = workdir / "nf4-checkpoint"
    nf4.save(nf4.load(base), ckpt, {"created_by": "qlora-hub bench quant"})
    ckpt_bytes = sum(p.stat().st_size for p in ckpt.iterdir())
    targets = {"quantize_on_load": base, "pre_quantized": ckpt}
    primers = _write_primer(workdir / "primer")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    primed: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    with Progress(transient=True) as progress:
        task = progress.add_task("fresh-process loads", total=2 * repeats * len(MODES))
        for _ in range(repeats):
            for mode in MODES:  # interleaved, so drift in machine load hits both modes alike
                runs[mode].append(_run_probe(mode, targets[mode]))
                primed[mode].append(_run_probe(mode, targets[mode], primers[mode]))
                progress.advance(task, 2)
    loads = {
        m: {
            "cold_seconds": _median(runs[m], "cold_seconds"),
            "warm_seconds": _median(runs[m], "warm_seconds"),
            "baseline_rss_mb": _median(runs[m], "baseline_rss") / 1e6,
            "peak_rss_mb": _median(runs[m], "peak_rss") / 1e6,
            "peak_over_baseline_mb": statistics.median(
                r["peak_rss"] - r["baseline_rss"] for r in runs[m]
            )
            / 1e6,
            "resident_peak_over_baseline_mb": statistics.median(
                r["resident_peak_rss"] - r["baseline_rss"] for r in runs[m]
            )
            / 1e6,
            "warm_peak_over_baseline_mb": _median(runs[m], "warm_over_baseline") / 1e6,
            "cold_growth_mb": {
                part: statistics.median(r["cold_breakdown"][part] for r in runs[m]) / 1e6
                for part in runs[m][0]["cold_breakdown"]
            },
            "primed_first_seconds": _median(primed[m], "cold_seconds"),
            "primed_first_resident_over_baseline_mb": statistics.median(
                r["resident_peak_rss"] - r["baseline_rss"] for r in primed[m]
            )
            / 1e6,
            "peak_reset": all(r["peak_reset"] for r in runs[m] + primed[m]),
        }
        for m in MODES
    }
    report = build_report(str(base))
    speedup = {
        kind: loads["quantize_on_load"][f"{kind}_seconds"]
        / loads["pre_quantized"][f"{kind}_seconds"]
        for kind in ("cold", "warm")
    }
    rss_budget_mb = 1.5 * ckpt_bytes / 1e6
    bits = _bits(base)
    errors = {
        where: {f: {k: figs[f][k] for k in ("rel_mse", "max_abs")} for f in figs if f != "shape"}
        for where, figs in (("base", _errors_only(report["quantized_total"])),
                            ("gaussian", _errors_only(report["gaussian"])))
    }  # fmt: skip
    return {
        "machine": {
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "cpu_cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "versions": library_versions(),
        },
        "base": str(base),
        "repeats": repeats,
        "checkpoint_bytes": ckpt_bytes,
        **loads,
        "speedup_pre_quantized": speedup,
        "rss_budget_mb": rss_budget_mb,
        "bits_per_param": bits,
        "error": errors,
        "targets": {
            "pre_quantized_3x_faster_warm": speedup["warm"] >= 3,
            "pre_quantized_3x_faster_cold": speedup["cold"] >= 3,
            "pre_quantized_rss_within_1_5x_checkpoint_cold": loads["pre_quantized"][
                "resident_peak_over_baseline_mb"
            ]
            <= rss_budget_mb,
            "pre_quantized_rss_within_1_5x_checkpoint_primed": loads["pre_quantized"][
                "primed_first_resident_over_baseline_mb"
            ]
            <= rss_budget_mb,
            "pre_quantized_rss_within_1_5x_checkpoint_warm": loads["pre_quantized"][
                "warm_peak_over_baseline_mb"
            ]
            <= rss_budget_mb,
            "bits_within_0_5_pct": all(abs(b["deviation_pct"]) <= 0.5 for b in bits.values()),
            "nf4_error_below_fp4_and_int4": all(
                e["nf4"]["rel_mse"] < min(e["fp4"]["rel_mse"], e["int4_absmax"]["rel_mse"])
                for e in errors.values()
            ),
        },
    }


def _errors_only(figs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in figs.items() if isinstance(v, dict)}


def _print(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    loads = Table(
        title=f"nf4 load on {result['machine']['device']} (median of {result['repeats']})"
    )
    cols = ("load", "cold s", "warm s", "baseline MB", "cold peak MB", "cold +MB",
            "cold resident +MB", "primed first +MB", "warm +MB")  # fmt: skip
    for col in cols:
        loads.add_column(col, justify="right")
    for mode in MODES:
        r = result[mode]
        loads.add_row(
            mode, f"{r['cold_seconds']:.3f}", f"{r['warm_seconds']:.3f}",
            f"{r['baseline_rss_mb']:.1f}", f"{r['peak_rss_mb']:.1f}",
            f"{r['peak_over_baseline_mb']:.1f}", f"{r['resident_peak_over_baseline_mb']:.1f}",
            f"{r['primed_first_resident_over_baseline_mb']:.1f}",
            f"{r['warm_peak_over_baseline_mb']:.1f}",
        )  # fmt: skip
    console.print(loads)
    speed = result["speedup_pre_quantized"]
    console.print(
        f"checkpoint {result['checkpoint_bytes'] / 1e6:.2f} MB (RSS budget 1.5x = "
        f"{result['rss_budget_mb']:.2f} MB); pre-quantized is {speed['cold']:.1f}x faster cold, "
        f"{speed['warm']:.1f}x warm"
    )
    for label, b in result["bits_per_param"].items():
        console.print(
            f"bits/param {label}: {b['measured']:.4f} measured vs {b['limit']:.4f} limit "
            f"({b['deviation_pct']:+.3f}%)"
        )
    errors = Table(title="relative MSE / max abs error")
    errors.add_column("weights")
    fmts = list(result["error"]["base"])
    for f in fmts:
        errors.add_column(f, justify="right")
    for where, figs in result["error"].items():
        errors.add_row(
            where, *[f"{figs[f]['rel_mse']:.5f} / {figs[f]['max_abs']:.4f}" for f in fmts]
        )
    console.print(errors)
    console.print("targets: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in
                                          result["targets"].items()))  # fmt: skip


@click.command("quant")
@click.argument("base", required=False, type=click.Path(path_type=Path))
@click.option("--repeats", default=3, show_default=True, help="Fresh-process loads per mode.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def bench_quant_cmd(base: Path | None, repeats: int, as_json: bool) -> None:
    """Quantize-on-load vs pre-quantized load (time, peak RSS), bits/param, error [default BASE: embedded]."""
    from hub.base import build_base

    with tempfile.TemporaryDirectory(prefix="qlora-hub-bench-") as tmp:
        workdir = Path(tmp)
        if base is None:
            base = workdir / "base"
            build_base(base)
        result = run_bench(base, workdir, repeats)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        _print(result)


# The fresh-process probe: python -m plugins.nf4.bench MODE PATH [PRIMER]
if __name__ == "__main__":
    print(json.dumps(probe(*sys.argv[1:4])))
