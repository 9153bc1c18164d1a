"""Three teams, a key holder and an aggregator run the four ``fed`` commands end to end.

Every role has its own home (as on separate machines); they share only the
round directory and public identities, exchanged with ``team export-public``
and ``team trust``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import plugins.ckks
import plugins.plain
import plugins.vault
from hub.cli import main, make_cli
from hub.plugins import Hub

ROLES = ("hold", "a", "b", "c", "agg")
WEIGHTS = {"a": "0.5", "b": "0.3", "c": "0.2"}


@pytest.fixture(scope="module")
def cli() -> Any:
    hub = Hub(
        builtins=False,
        extra=[("ckks", plugins.ckks), ("plain", plugins.plain), ("vault", plugins.vault)],
    )
    root, runner = make_cli(hub), CliRunner()

    def run(role_home: Path, *args: str) -> str:
        result = runner.invoke(root, ["--home", str(role_home), *args], obj=hub)
        assert result.exit_code == 0, (args, result.output, result.exception)
        return result.output

    return run


@pytest.fixture(scope="module")
def world(cli: Any, tmp_path_factory: pytest.TempPathFactory, adapter_factory: Any) -> dict:
    """Homes for each role, identities exchanged, adapters on disk, the round run through."""
    base = tmp_path_factory.mktemp("fedcli")
    homes = {r: base / r for r in ROLES}
    pubs = base / "public"
    pubs.mkdir()
    for team in ("hold", "a", "b", "c"):
        cli(homes[team], "team", "create", team, "--no-passphrase")
        cli(homes[team], "team", "export-public", team, "--out", str(pubs / f"{team}.json"))
    trusts = {
        "hold": "abc",
        "a": ["hold"],
        "b": ["hold"],
        "c": ["hold"],
        "agg": ["hold", "a", "b", "c"],
    }
    for role, others in trusts.items():
        for other in others:
            cli(homes[role], "team", "trust", str(pubs / f"{other}.json"))
    adapters = {}
    for team, seed in (("a", 1), ("b", 2), ("c", 3)):
        ad = adapter_factory(f"{team}-task", seed)
        path = base / "adapters" / team
        path.mkdir(parents=True)
        for name, data in ad.files.items():
            (path / name).write_bytes(data)
        adapters[team] = (ad, path)
    shared = base / "shared" / "r1"
    rd = ("--round", "r1", "--round-dir", str(shared))
    out = {
        "init": cli(
            homes["hold"], "fed", "init", *rd, "--teams", "a,b,c", "--mode", "ffa", "--team", "hold"
        )
    }
    # Team a contributes an adapter from its vault by name; b and c from PEFT directories.
    from hub.config import load_settings
    from hub.store import open_store

    vault_hub = Hub(builtins=False, extra=[("vault", plugins.vault)])
    store = open_store(vault_hub, load_settings(homes["a"]), "vault", team="a")
    store.push(adapters["a"][0], team="a")
    sources = {"a": "a-task", "b": str(adapters["b"][1]), "c": str(adapters["c"][1])}
    for team, source in sources.items():
        out[team] = cli(
            homes[team],
            "fed",
            "contribute",
            *rd,
            "--team",
            team,
            "--adapter",
            source,
            "--key-holder",
            "hold",
            "--weight",
            WEIGHTS[team],
        )
    out["aggregate"] = cli(homes["agg"], "fed", "aggregate", *rd)
    out["finalize"] = cli(
        homes["hold"],
        "fed",
        "finalize",
        *rd,
        "--name",
        "merged",
        "--team",
        "hold",
        "--out",
        str(base / "merged"),
    )
    return {
        "homes": homes,
        "shared": shared,
        "adapters": adapters,
        "out": out,
        "merged": base / "merged",
    }


def test_init_reports_round_and_public_context(world: dict) -> None:
    assert world["out"]["init"].startswith(
        "round r1: ckks/ffa, teams a, b, c, N=8192, key holder hold;"
    )


def test_contribute_writes_signed_file_per_team(world: dict) -> None:
    for team in "abc":
        assert (
            f"team {team}: wrote {world['shared'] / 'contributions' / (team + '.fedc')}"
            in (world["out"][team])
        )


def test_finalize_pushes_merged_adapter_shared_with_teams(world: dict) -> None:
    import json

    report = json.loads(world["out"]["finalize"])
    assert report["pushed"] == "merged@1" and report["shared_with"] == ["a", "b", "c"]
    assert report["teams"] == ["a", "b", "c"] and report["weight_sum"] == pytest.approx(1.0)


def test_vault_record_is_readable_by_every_team(world: dict) -> None:
    from hub.config import load_settings
    from hub.store import open_store

    hub = Hub(builtins=False, extra=[("vault", plugins.vault)])
    store = open_store(hub, load_settings(world["homes"]["hold"]), "vault", team="hold")
    (record,) = [r for r in store.list(team="hold") if r.name == "merged"]
    assert set(record.shared_with) >= {"a", "b", "c"}


def test_merged_adapter_is_weighted_sum_in_bf16(world: dict) -> None:
    import torch
    from safetensors.torch import load_file

    got = load_file(world["merged"] / "adapter_model.safetensors")
    for name, value in got.items():
        assert value.dtype == torch.bfloat16
        if name.endswith("lora_B.weight"):
            want = sum(
                float(WEIGHTS[t]) * ad.tensors()[name].double()
                for t, (ad, _) in world["adapters"].items()
            )
            # One bf16 ulp: CKKS noise (~1e-9) can tip a value sitting on a rounding boundary.
            torch.testing.assert_close(
                value.float(), want.to(torch.bfloat16).float(), atol=1e-6, rtol=2**-7
            )


def test_merged_adapter_loads_in_peft(world: dict, embedded_base: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(embedded_base), world["merged"]
    )
    lora_b = model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight
    assert lora_b.shape == (256, 4) and lora_b.abs().sum() > 0


def test_only_the_key_holder_home_has_a_secret_context(world: dict) -> None:
    holders = {r for r, h in world["homes"].items() if list(h.rglob("secret.context"))}
    assert holders == {"hold"}
    assert not list(world["shared"].rglob("secret.context"))


def test_cli_refuses_insecure_parameters_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["qlora-hub"])
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "--home",
                str(tmp_path),
                "fed",
                "init",
                "--round",
                "r9",
                "--teams",
                "a,b",
                "--team",
                "hold",
                "--poly-modulus-degree",
                "4096",
            ]
        )
    assert exc.value.code == 2
    assert capsys.readouterr().err == (
        "error: CKKS parameters below 128-bit security: N=4096 allows at most 109 "
        "coefficient-modulus bits, got 200 (60,40,40,60): raise N or use the default "
        "N=8192 with 60,40,40,60\n"
    )


def cli_error(world: dict, home: str, *args: str) -> str:
    """The one-line ``error: ...`` that ``main`` prints for the HubError the command raises."""
    from hub.errors import HubError

    hub = Hub(builtins=False, extra=[("ckks", plugins.ckks), ("plain", plugins.plain)])
    result = CliRunner().invoke(
        make_cli(hub), ["--home", str(world["homes"][home]), *args], obj=hub
    )
    assert isinstance(result.exception, HubError), result.output
    return f"error: {result.exception}\n"


def contribute_args(world: dict, rdir: Path, key_holder: str) -> list[str]:
    return [
        "fed",
        "contribute",
        "--round",
        "r1",
        "--round-dir",
        str(rdir),
        "--team",
        "a",
        "--key-holder",
        key_holder,
        "--adapter",
        str(world["adapters"]["b"][1]),
    ]


def test_contribute_refuses_a_round_signed_by_another_key_holder(world: dict) -> None:
    out = cli_error(world, "a", *contribute_args(world, world["shared"], "b"))
    assert out == (
        "error: round r1 is signed by team 'hold', not by the key holder you expect ('b'): "
        "do not contribute; check with 'b'\n"
    )


def test_contribute_refuses_an_unsigned_round(world: dict, tmp_path: Path) -> None:
    import json
    import shutil

    rdir = tmp_path / "r1"
    shutil.copytree(world["shared"], rdir, ignore=shutil.ignore_patterns("*.fedc"))
    doc = json.loads((rdir / "round.json").read_text())
    doc["meta"]["key_holder"], doc["signatures"] = None, {}
    (rdir / "round.json").write_text(json.dumps(doc))
    out = cli_error(world, "a", *contribute_args(world, rdir, "hold"))
    assert out.startswith(f"error: {rdir / 'round.json'} is not signed by a key holder")
    assert not list((rdir / "contributions").glob("*.fedc"))


def test_contribute_refuses_a_plain_round_without_allow_plain(
    world: dict, cli: Any, tmp_path: Path
) -> None:
    rdir = tmp_path / "p1"
    rd = ("--round", "r1", "--round-dir", str(rdir))
    cli(world["homes"]["hold"], "fed", "init", *rd, "--teams", "a,b", "--team", "hold",
        "--aggregator", "plain")  # fmt: skip
    out = cli_error(world, "a", *contribute_args(world, rdir, "hold"))
    assert out == (
        "error: round r1 uses the 'plain' aggregator, which sends your update unencrypted: "
        "refuse it, or pass --allow-plain if that is intended\n"
    )
    written = cli(world["homes"]["a"], *contribute_args(world, rdir, "hold"), "--allow-plain")
    assert "weight 1 (default)" in written
