"""``qlora-hub quantize`` and ``qlora-hub bench quant``.

Only click is imported here; torch, transformers and bitsandbytes are
imported inside the command functions (``qlora-hub --help`` stays fast).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from hub.cli import CliState, device_option, pass_state
from hub.errors import ValidationError
from plugins.nf4.options import DTYPES, STORAGE_DTYPES

SETTING_KEYS = ("double_quant", "compute_dtype", "quant_storage")
"""Options that also come from the ``[quantize]`` settings table."""


def quantizer_options(state: CliState, method: str, flags: dict[str, Any]) -> dict[str, Any]:
    """Options for ``method``: settings for the keys it supports, overridden by explicit flags.

    A flag the method does not support is passed through, so the quantizer
    names it in its error.
    """
    quantizer = state.hub.quantizers[method]
    supported = getattr(quantizer, "supported_options", SETTING_KEYS)
    opts = {k: state.settings.get(f"quantize.{k}") for k in SETTING_KEYS if k in supported}
    given = {k: v for k, v in flags.items() if v is not None and v != ()}
    if not given.get("allow_pickle"):  # a plain flag: absent means "not given", not False
        given.pop("allow_pickle", None)
    opts.update(given)
    return opts


def _summary(manifest: dict[str, Any], footprint: dict[str, Any], out: Path) -> str:
    kept = manifest.get("kept_modules", []) + sorted(manifest.get("unsupported_modules", {}))
    size = sum((out / name).stat().st_size for name in manifest["files"])
    return (
        f"wrote {manifest['method']} checkpoint to {out}: "
        f"{len(manifest.get('quantized_modules', []))} layers quantized, "
        f"{len(kept)} kept ({', '.join(kept) or 'none'}); quantized weights "
        f"{footprint['quantized_bits_per_param']:.3f} bits/param, whole model "
        f"{footprint['bits_per_param']:.3f}; {size / 1e6:.2f} MB on disk; "
        f"base fingerprint {manifest['base_fingerprint'][:16]}"
    )


def _load_reporting_skips(
    state: CliState, method: str, base: str, options: dict[str, Any], device: str
) -> Any:
    """The quantized model (on ``device``), skipped-layer warnings printed as ``warning:`` lines."""
    import warnings

    from hub.models import load_on_device, options_for_device
    from plugins.nf4.quantizers import SkippedLayersWarning

    quantizer = state.hub.quantizers[method]
    options = options_for_device(quantizer, options, device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkippedLayersWarning)
        model = load_on_device(quantizer.load, base, options, device=device)
    for w in caught:
        if issubclass(w.category, SkippedLayersWarning):
            click.echo(f"warning: {w.message}", err=True)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return model


@click.command("quantize")
@click.argument("base")
@click.option("--out", type=click.Path(path_type=Path), help="Write a pre-quantized checkpoint.")
@click.option(
    "--report",
    is_flag=True,
    help="Print the footprint and error report instead (headline: --method, nf4 or fp4).",
)
@click.option("--method", default=None, help="Quantizer [setting quantize.method; default nf4].")
@click.option(
    "--double-quant/--no-double-quant",
    default=None,
    help="Quantize the absmax scales too (4-bit methods) [default on].",
)
@click.option("--compute-dtype", type=click.Choice(DTYPES), default=None)
@click.option(
    "--quant-storage",
    type=click.Choice(STORAGE_DTYPES),
    default=None,
    help="dtype holding the packed 4-bit weights (bfloat16 for FSDP).",
)
@click.option("--skip-module", "skip_modules", multiple=True, help="Keep a module unquantized.")
@click.option("--allow-pickle", is_flag=True, help="Accept pytorch_model.bin (weights_only=True).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@device_option
@pass_state
def quantize_cmd(
    state: CliState,
    base: str,
    out: Path | None,
    report: bool,
    method: str | None,
    as_json: bool,
    device: str | None,
    **flags: Any,
) -> None:
    """Quantize BASE (model directory or hub id): write a checkpoint (--out) or report (--report)."""
    if bool(out) == report:
        raise ValidationError("give exactly one of --out DIR (write a checkpoint) or --report")
    state.settings.override("quantize.method", method)
    method = state.settings.get("quantize.method")
    quantizer = state.hub.quantizers[method]
    if report:
        from plugins.nf4.report import build_report, check_method, print_report

        check_method(method)  # before the (slow) load
        state.settings.override("quantize.double_quant", flags["double_quant"])
        result = build_report(
            base,
            allow_pickle=flags["allow_pickle"],
            double_quant=state.settings.get("quantize.double_quant"),
            method=method,
        )
        if as_json:
            click.echo(json.dumps(result, indent=2))
        else:
            print_report(result)
        return
    from hub.models import resolve_device
    from plugins.nf4.checkpoint import ensure_empty_dir

    ensure_empty_dir(out)  # fail before the (slow) load
    device = state.device(device)
    resolve_device(device)  # a bad --device fails before the load too
    options = quantizer_options(state, method, flags)
    model = _load_reporting_skips(state, method, base, options, device)
    manifest = quantizer.save(model, out, {"created_by": "qlora-hub quantize"})
    footprint = quantizer.footprint(model)
    if as_json:
        click.echo(
            json.dumps(
                {"checkpoint": str(out), "manifest": manifest, "footprint": footprint}, indent=2
            )
        )
    else:
        click.echo(_summary(manifest, footprint, out))


def add_commands(cli: click.Group) -> None:
    """Attach the commands to the root group (and ``bench quant`` to ``bench``)."""
    cli.add_command(quantize_cmd)
    from plugins.nf4.bench import bench_quant_cmd

    cli.commands["bench"].add_command(bench_quant_cmd)
