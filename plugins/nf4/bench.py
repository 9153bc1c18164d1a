"""``qlora-hub bench quant``: load time, peak RSS, bits/param and error, measured fresh."""

from __future__ import annotations

import click


@click.command("quant")
@click.argument("base", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def bench_quant_cmd(base: str | None, as_json: bool) -> None:
    """Quantize-on-load vs pre-quantized load: time, peak RSS, bits/param, error."""
    raise click.ClickException("not implemented yet")
