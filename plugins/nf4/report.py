"""``qlora-hub quantize BASE --report``: footprint and reconstruction error, per layer and total.

For every linear layer the nf4 quantizer would quantize, the original
weight is round-tripped through nf4, fp4 (bitsandbytes) and plain int4
absmax; the report gives parameters, bytes, bits per parameter, relative
MSE (``||W - Ŵ||² / ||W||²``) and max abs error for each, then totals for
the quantized weights and for the whole model (unquantized tensors at their
stored size), and the same error figures on a Gaussian reference matrix.
``--method`` picks the headline format (bits column, title); the report
measures the 4-bit formats only, so other methods are refused with the way
to quantize with them instead.
"""

from __future__ import annotations

from typing import Any

from hub.errors import ValidationError
from plugins.nf4.footprint import nf4_limit_bits
from plugins.nf4.reconstruction import FORMATS, compare_formats, figures
from plugins.nf4.source import plan_layers, resolve_source

REPORTED_METHODS = ("nf4", "fp4")
"""Methods whose format the report measures (and headlines)."""
GAUSSIAN_SHAPE = (768, 256)
GAUSSIAN_SEED = 0


def _add(total: dict[str, float], sums: dict[str, float]) -> None:
    total["sq_err"] += sums["sq_err"]
    total["sq_norm"] += sums["sq_norm"]
    total["max_abs"] = max(total["max_abs"], sums["max_abs"])


def gaussian_reference(*, double_quant: bool = True) -> dict[str, Any]:
    """Error figures of each format on a seeded N(0, 0.02²) matrix (bf16, like the base's init)."""
    import torch

    gen = torch.Generator().manual_seed(GAUSSIAN_SEED)
    weight = (torch.randn(GAUSSIAN_SHAPE, generator=gen) * 0.02).to(torch.bfloat16)
    params = weight.numel()
    result = compare_formats(weight, double_quant=double_quant)
    return {
        "shape": list(GAUSSIAN_SHAPE),
        **{f: figures(r["sums"], r["bytes"], params) for f, r in result.items()},
    }


def check_method(method: str) -> str:
    """``method`` if the report can headline it, else a ValidationError saying what to do."""
    if method not in REPORTED_METHODS:
        raise ValidationError(
            f"--report measures the 4-bit formats ({', '.join(REPORTED_METHODS)}); it has no "
            f"figures for method {method!r}: quantize with it using --out DIR instead"
        )
    return method


def build_report(
    source: str, *, allow_pickle: bool = False, double_quant: bool = True, method: str = "nf4"
) -> dict[str, Any]:
    """Measure footprint and reconstruction error of ``source`` (model directory or hub id).

    Returns:
        ``{"source", "method", "base_fingerprint", "double_quant", "format_limit_bits",
        "layers", "skipped", "quantized_total", "model_total", "gaussian"}``; each
        format's figures are ``{"bytes", "bits_per_param", "rel_mse", "max_abs"}``;
        ``method`` is the headline format.
    """
    check_method(method)
    from rich.progress import track

    from plugins.nf4.quantizers import builtin_quantizers

    src = resolve_source(source, allow_pickle=allow_pickle)
    plan = plan_layers(src, skip_modules=[], four_bit=True)
    none = {q.name: q for q in builtin_quantizers()}["none"]
    model = none.load(source, {"allow_pickle": allow_pickle})  # originals, bf16
    layers, totals = [], {f: {"sq_err": 0.0, "sq_norm": 0.0, "max_abs": 0.0} for f in FORMATS}
    nbytes = dict.fromkeys(FORMATS, 0)
    q_params = q_original = 0
    quantized_ids = set()
    for name in track(plan.quantized, description="round-tripping layers", transient=True):
        weight = model.get_submodule(name).weight.detach()
        quantized_ids.add(id(model.get_submodule(name).weight))
        params = weight.numel()
        result = compare_formats(weight, double_quant=double_quant)
        row = {"name": name, "shape": list(plan.shapes[name]), "params": params,
               "original_bytes": params * weight.element_size()}  # fmt: skip
        for fmt, r in result.items():
            row[fmt] = figures(r["sums"], r["bytes"], params)
            _add(totals[fmt], r["sums"])
            nbytes[fmt] += r["bytes"]
        layers.append(row)
        q_params += params
        q_original += row["original_bytes"]
    rest = [p for p in model.parameters() if id(p) not in quantized_ids]
    rest_params = sum(p.numel() for p in rest)
    rest_bytes = sum(p.numel() * p.element_size() for p in rest)
    all_params = q_params + rest_params
    return {
        "source": src.given,
        "method": method,
        "base_fingerprint": src.fingerprint(),
        "double_quant": double_quant,
        "format_limit_bits": nf4_limit_bits(double_quant),
        "layers": layers,
        "skipped": {**dict.fromkeys(plan.kept, "kept in full precision"), **plan.unsupported},
        "quantized_total": {
            "params": q_params,
            "original_bytes": q_original,
            **{f: figures(totals[f], nbytes[f], q_params) for f in FORMATS},
        },
        "model_total": {
            "params": all_params,
            "original_bytes": q_original + rest_bytes,
            "original_bits_per_param": 8 * (q_original + rest_bytes) / all_params,
            **{
                f: {
                    "bytes": nbytes[f] + rest_bytes,
                    "bits_per_param": 8 * (nbytes[f] + rest_bytes) / all_params,
                }
                for f in FORMATS
            },
        },
        "gaussian": gaussian_reference(double_quant=double_quant),
    }


def _short(name: str, prefix: str) -> str:
    return name[len(prefix) :] if prefix and name.startswith(prefix) else name


def _error_cells(figs: dict[str, dict[str, float]], method: str) -> list[str]:
    """``method``'s bits, then relative MSE of each format, then max abs error of each."""
    return [
        f"{figs[method]['bits_per_param']:.3f}",
        *[f"{figs[f]['rel_mse']:.5f}" for f in FORMATS],
        *[f"{figs[f]['max_abs']:.4f}" for f in FORMATS],
    ]


def print_report(report: dict[str, Any], console: Any = None) -> None:
    """Print :func:`build_report`'s result as rich tables."""
    import os

    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    method = report.get("method", "nf4")
    names = [row["name"] for row in report["layers"]]
    prefix = os.path.commonprefix(names).rpartition(".")[0] + "." if len(names) > 1 else ""
    dq = "with" if report["double_quant"] else "without"
    table = Table(
        title=f"quantization error per layer of {report['source']} "
        f"(method {method}; block 64; nf4/fp4 {dq} double quant)",
        caption=(f"layer names without the prefix {prefix!r}; " if prefix else "")
        + "int4 = plain blockwise absmax int4 (-7..7, one fp32 scale per 64 weights)",
    )
    for col in ("layer", "shape", "params", f"bits {method}"):
        table.add_column(col, justify="left" if col == "layer" else "right", no_wrap=True)
    for label in ("rel MSE", "max err"):
        for fmt in FORMATS:
            table.add_column(f"{label} {fmt.split('_')[0]}", justify="right")
    for row in report["layers"]:
        table.add_row(
            _short(row["name"], prefix), "x".join(map(str, row["shape"])), f"{row['params']:,}",
            *_error_cells(row, method),
        )  # fmt: skip
    total, gauss = report["quantized_total"], report["gaussian"]
    table.add_section()
    table.add_row(
        "all quantized", "", f"{total['params']:,}", *_error_cells(total, method), style="bold"
    )
    g_params = gauss["shape"][0] * gauss["shape"][1]
    table.add_row(
        "gaussian ref.", "x".join(map(str, gauss["shape"])), f"{g_params:,}",
        *_error_cells(gauss, method), style="italic",
    )  # fmt: skip
    console.print(table)

    whole = report["model_total"]
    summary = Table(title="footprint (bytes, bits per parameter)")
    summary.add_column("format")
    summary.add_column(f"quantized linear weights ({total['params']:,})", justify="right")
    summary.add_column("b/p", justify="right")
    summary.add_column(f"whole model ({whole['params']:,})", justify="right")
    summary.add_column("b/p", justify="right")
    summary.add_row(
        "original", f"{total['original_bytes']:,}", "16.000", f"{whole['original_bytes']:,}",
        f"{whole['original_bits_per_param']:.3f}",
    )  # fmt: skip
    for f in FORMATS:
        summary.add_row(
            f, f"{total[f]['bytes']:,}", f"{total[f]['bits_per_param']:.3f}",
            f"{whole[f]['bytes']:,}", f"{whole[f]['bits_per_param']:.3f}",
        )  # fmt: skip
    console.print(summary)
    skipped = ", ".join(f"{n} ({why})" for n, why in sorted(report["skipped"].items()))
    console.print(
        f"format limit {report['format_limit_bits']:.4f} bits/param; "
        f"not quantized: {skipped or 'none'}"
    )
