"""``qlora-hub bench fed`` (filled in below)."""

import click


@click.command("fed")
def bench_fed() -> None:
    """Benchmark federated aggregation."""
