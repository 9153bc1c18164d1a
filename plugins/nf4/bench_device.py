"""The ``quantize`` section of ``qlora-hub bench gpu``: NF4 + double quant on a device.

``python -m plugins.nf4.bench_device BASE WORKDIR DEVICE OUT_JSON`` quantizes BASE on
load (time, bits/param, device memory), writes the pre-quantized checkpoint (time, size
on disk), then loads it back (time, device memory); the two loads alternate twice and
each keeps its faster one (the first pays the file cache and CUDA's one-time set-up).
The result file is rewritten after every step, so a kill keeps what finished.
"""

from __future__ import annotations

import gc
import inspect
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def _say(msg: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def _memory(device: str) -> dict[str, Any]:
    """Device memory now and at its peak since the last reset (CUDA), in bytes."""
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return {}
    torch.cuda.synchronize()
    return {
        "allocated_bytes": torch.cuda.memory_allocated(),
        "peak_allocated_bytes": torch.cuda.max_memory_allocated(),
    }


def _fresh(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _takes_device(fn: Any) -> bool:
    return "device" in inspect.signature(fn).parameters


def _on_load(quantizer: Any, base: str, device: str) -> Any:
    if _takes_device(quantizer.load):  # the compute dtype follows the device (auto)
        return quantizer.load(base, {}, device=device)
    from hub.models import default_compute_dtype

    return quantizer.load(base, {"compute_dtype": default_compute_dtype()})


def _pre_quantized(quantizer: Any, checkpoint: Path, device: str) -> Any:
    if _takes_device(quantizer.load_quantized):
        return quantizer.load_quantized(checkpoint, device=device)
    return quantizer.load_quantized(checkpoint)


def _timed_load(load: Any, device: str) -> tuple[Any, dict[str, Any]]:
    import torch

    _fresh(device)
    start = time.perf_counter()
    model = load()
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    info = {
        "seconds": round(seconds, 3),
        "model_device": str(next(model.parameters()).device),
        **_memory(device),
    }
    return model, info


def run(base: str, workdir: Path, device: str, out: Path) -> None:
    """Every step of the section; ``out`` holds the result so far after each."""
    import torch

    from plugins.nf4.quantizers import builtin_quantizers

    result: dict[str, Any] = {"device": device}

    def put(key: str, value: Any) -> None:
        result[key] = value
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2, default=str))
        os.replace(tmp, out)

    nf4 = {q.name: q for q in builtin_quantizers()}["nf4"]
    if device.startswith("cuda"):
        torch.zeros(1, device=device)  # CUDA's context, outside the timed loads
    model, info = _timed_load(lambda: _on_load(nf4, base, device), device)
    put("footprint", nf4.footprint(model))
    put("quantize_on_load_first", info)
    _say(f"quantize: quantize-on-load {info['seconds']} s")
    checkpoint = workdir / "nf4-checkpoint"
    start = time.perf_counter()
    nf4.save(model, checkpoint, {"created_by": "qlora-hub bench gpu"})
    size = sum(p.stat().st_size for p in checkpoint.iterdir() if p.is_file())
    put("save", {"seconds": round(time.perf_counter() - start, 3), "bytes_on_disk": size})
    del model
    loads: dict[str, list[dict[str, Any]]] = {"quantize_on_load": [info], "pre_quantized": []}
    for round_ in range(2):
        model, got = _timed_load(lambda: _pre_quantized(nf4, checkpoint, device), device)
        got["loader"] = (getattr(model, "qlora_hub_quant", None) or {}).get("loader")
        loads["pre_quantized"].append(got)
        put("pre_quantized_runs", loads["pre_quantized"])
        _say(f"quantize: pre-quantized load {got['seconds']} s")
        del model
        if round_ == 0:
            model, got = _timed_load(lambda: _on_load(nf4, base, device), device)
            loads["quantize_on_load"].append(got)
            put("quantize_on_load_runs", loads["quantize_on_load"])
            del model
    best = {k: min(v, key=lambda r: r["seconds"]) for k, v in loads.items()}
    put("quantize_on_load", best["quantize_on_load"])
    put("pre_quantized", best["pre_quantized"])
    put(
        "ratio_load_speedup_pre_quantized",
        round(best["quantize_on_load"]["seconds"] / best["pre_quantized"]["seconds"], 2),
    )


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    run(sys.argv[1], Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
