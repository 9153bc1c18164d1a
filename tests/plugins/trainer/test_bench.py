"""``qlora-hub bench train`` through the real click command (tiny step counts: outcomes, not speed)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from hub.cli import make_cli
from hub.errors import HubError


@pytest.fixture
def invoke(hub_factory, qlora_home):
    import plugins.trainer

    hub = hub_factory(plugins.trainer)
    cli = make_cli(hub)

    def run(*args):
        return CliRunner().invoke(cli, list(args), obj=hub)

    return run


def test_bench_train_reports_both_ratios_from_four_real_runs(invoke, embedded_base):
    result = invoke(
        "bench", "train", "--base", str(embedded_base), "--steps", "2", "--padded-steps", "2", "--batch-size", "16",
        "--repeats", "1", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    runs = report["runs"]
    assert set(runs) == {
        "reference_padded",
        "hub_padded",
        "reference_variable_padded",
        "hub_variable_packed",
    }
    # padded sides see the same batches: same token counts on both sides
    assert runs["hub_padded"]["tokens"] == runs["reference_padded"]["tokens"]
    # on the same variable-length rows, packing fills far more of each batch than padding
    fill = {
        name: runs[name]["useful_tokens"] / runs[name]["tokens"]
        for name in ("hub_variable_packed", "reference_variable_padded")
    }
    assert fill["hub_variable_packed"] > fill["reference_variable_padded"] + 0.2
    assert report["padded_tokens_per_s_ratio"] == round(
        runs["hub_padded"]["tokens_per_s"] / runs["reference_padded"]["tokens_per_s"], 3
    )
    assert all(len(r["all_seconds"]) == 1 for r in runs.values())


def test_bench_train_refuses_zero_repeats(invoke):
    result = invoke("bench", "train", "--repeats", "0")
    assert isinstance(result.exception, HubError)
    assert str(result.exception) == "--repeats must be at least 1, got 0"
