"""``qlora-hub fed run``: chained rounds, each starting every team from the previous merge."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from hub.cli import make_cli
from hub.plugins import Hub

pytestmark = pytest.mark.slow  # four 2-step training runs and two plain rounds


@pytest.fixture(scope="module")
def fed_run(tmp_path_factory: pytest.TempPathFactory, embedded_base: Path) -> dict:
    from plugins.trainer.synth import synthesize

    root = tmp_path_factory.mktemp("fedrun")
    shards = {}
    for seed, (team, letters) in enumerate((("a", "abcdefghijklm"), ("b", "nopqrstuvwxyz"))):
        shards[team] = synthesize("upper", 40 + 20 * seed, root / team, held_out=4, seed=seed,
                                  letters=letters)  # fmt: skip
    hub = Hub()
    args = ["--home", str(root / "home"), "fed", "run", "--base", str(embedded_base)]
    args += ["--shard", f"a={shards['a']['train']}", "--shard", f"b={shards['b']['train']}"]
    args += ["--rounds", "2", "--steps", "2", "--batch-size", "4", "--r", "4"]
    args += ["--aggregator", "plain", "--eval-data", str(shards["a"]["held_out"])]
    args += ["--out", str(root / "out")]
    result = CliRunner().invoke(make_cli(hub), args, obj=hub)
    assert result.exit_code == 0, (result.output, result.exception)
    # stdout and stderr are mixed here (progress bars end in \r): take each line's JSON object
    lines = [json.loads(x[x.index('{"') :]) for x in result.output.splitlines() if '{"' in x]
    return {"out": root / "out", "lines": lines}


def test_one_json_line_per_round_with_weights_from_example_counts(fed_run: dict) -> None:
    lines = fed_run["lines"]
    assert [x["round"] for x in lines] == [1, 2]
    assert lines[0]["weights"] == {"a": 40.0, "b": 60.0}
    assert lines[0]["shares"] == {"a": 0.4, "b": 0.6}
    assert all(0.0 <= x["exact_match"] <= 1.0 for x in lines)
    # --round-lr cosine (the default): round 1 of 2 at 85%, round 2 at 15% of --lr 5e-3
    assert [x["learning_rate"] for x in lines] == pytest.approx([4.268e-3, 0.732e-3], rel=1e-3)


def test_round_two_starts_from_round_one_merge_in_its_signed_manifest(fed_run: dict) -> None:
    out = fed_run["out"]
    first = (out / "r1" / "merged" / "adapter_model.safetensors").read_bytes()
    want = {"ref": "merged@1", "sha256": hashlib.sha256(first).hexdigest()}
    doc = json.loads((out / "r2" / "round" / "round.json").read_text())
    assert doc["meta"]["start"] == want and doc["signatures"]["team"] == "hold"
    assert fed_run["lines"][1]["start"] == want
    for team in "ab":
        manifest = json.loads((out / "r2" / team / "manifest.json").read_text())
        assert manifest["init_adapter"] == want


def test_frozen_a_of_the_merge_is_what_round_two_trained_with(fed_run: dict) -> None:
    import torch
    from safetensors.torch import load_file

    merged = load_file(fed_run["out"] / "r1" / "merged" / "adapter_model.safetensors")
    trained = load_file(fed_run["out"] / "r2" / "a" / "adapter" / "adapter_model.safetensors")
    for name, value in merged.items():
        if "lora_A" in name:
            assert torch.equal(trained[name].to(value.dtype), value), name


def test_fed_run_refuses_one_team_in_one_line(tmp_path: Path) -> None:
    hub = Hub()
    args = ["--home", str(tmp_path), "fed", "run", "--base", str(tmp_path), "--shard", "a=x.jsonl"]
    result = CliRunner().invoke(make_cli(hub), [*args, "--out", str(tmp_path / "o")], obj=hub)
    assert str(result.exception) == (
        "fed run needs at least 2 teams (--shard TEAM=FILE, repeated); "
        "existing shard files (missing: x.jsonl)"
    )
