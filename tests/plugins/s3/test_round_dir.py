"""A federated round whose directory is an ``s3://`` URL: every role has its own home and
they share only the bucket prefix (``--round-dir s3://...``) and public identities."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import plugins.ckks
import plugins.s3
import plugins.vault
from hub.cli import run as run_cli
from hub.errors import ValidationError
from hub.fed.rounddir import staged_round
from hub.plugins import Hub
from tests.plugins.ckks.conftest import make_adapter

PARAMS = ("--poly-modulus-degree", "4096", "--coeff-bits", "60,49", "--scale-bits", "40")


@pytest.fixture(scope="module")
def fed_hub() -> Hub:
    return Hub(
        builtins=False,
        extra=[("ckks", plugins.ckks), ("vault", plugins.vault), ("s3", plugins.s3)],
    )


@pytest.fixture
def cli(fed_hub, capsys) -> Any:
    """``cli(home, *args, ok=True)``: run the CLI as ``qlora-hub`` does; stdout + stderr."""

    def run(home: Path, *args: str, ok: bool = True) -> str:
        code = run_cli(["--home", str(home), *args], make_hub=lambda disabled: fed_hub)
        out = capsys.readouterr()
        assert (code == 0) == ok, (args, out.out, out.err)
        return out.out + out.err

    return run


@pytest.fixture
def world(cli, tmp_path, s3_url) -> dict:
    """Homes ``hold`` (key holder and aggregator), ``a`` and ``b``; round r1 started at
    ``s3_url``; the two adapters on disk."""
    homes = {t: tmp_path / t for t in ("hold", "a", "b")}
    for team, home in homes.items():
        cli(home, "team", "create", team, "--no-passphrase", "--classical")
        cli(home, "team", "export-public", team, "--out", str(tmp_path / f"{team}.json"))
    for team, others in {"hold": "ab", "a": ["hold"], "b": ["hold"]}.items():
        for other in others:
            cli(homes[team], "team", "trust", str(tmp_path / f"{other}.json"))
    adapters = {}
    for team, seed in (("a", 1), ("b", 2)):
        adapters[team] = tmp_path / "adapters" / team
        adapters[team].mkdir(parents=True)
        for name, data in make_adapter(f"{team}-task", seed).files.items():
            (adapters[team] / name).write_bytes(data)
    rd = ("--round", "r1", "--round-dir", s3_url)
    init = cli(homes["hold"], "fed", "init", *rd, "--teams", "a,b", "--team", "hold", *PARAMS)
    return {"homes": homes, "adapters": adapters, "rd": rd, "init": init, "url": s3_url}


def _contribute(cli, world, team: str, **kw) -> str:
    return cli(
        world["homes"][team],
        "fed",
        "contribute",
        *world["rd"],
        "--team",
        team,
        "--adapter",
        str(world["adapters"][team]),
        "--key-holder",
        kw.pop("key_holder", "hold"),
        "--weight",
        "1",
        **kw,
    )


def _objects(s3_endpoint, url: str) -> dict[str, bytes]:
    bucket, prefix = url.removeprefix("s3://").split("/", 1)
    client = s3_endpoint.client()
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])
    return {
        o["Key"][len(prefix) + 1 :]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        for o in listed
    }


def test_four_roles_run_a_round_through_a_bucket(cli, world, s3_endpoint, tmp_path) -> None:
    import torch
    from safetensors.torch import load

    for team in ("a", "b"):
        _contribute(cli, world, team)
    cli(world["homes"]["hold"], "fed", "aggregate", *world["rd"])
    merged = tmp_path / "merged"
    out = cli(
        world["homes"]["hold"],
        "fed",
        "finalize",
        *world["rd"],
        "--name",
        "merged",
        "--team",
        "hold",
        "--no-push",
        "--out",
        str(merged),
    )

    assert f"uploaded round.json to {world['url']}/round.json" in world["init"]
    assert sorted(_objects(s3_endpoint, world["url"])) == [
        "aggregate.fedc",
        "contributions/a.fedc",
        "contributions/b.fedc",
        "public.context",
        "round.json",
    ]
    assert '"teams": [\n    "a",\n    "b"\n  ]' in out
    got = load((merged / "adapter_model.safetensors").read_bytes())
    parts = [load((world["adapters"][t] / "adapter_model.safetensors").read_bytes()) for t in "ab"]
    key = next(k for k in got if k.endswith("lora_B.weight"))
    mean = (parts[0][key] + parts[1][key]) / 2  # equal weights: the FedAvg mean of B
    assert torch.allclose(got[key].float(), mean.float(), atol=2e-3)


def test_a_second_contribution_by_a_team_is_refused_and_the_first_kept(
    cli, world, s3_endpoint
) -> None:
    _contribute(cli, world, "a")
    first = _objects(s3_endpoint, world["url"])["contributions/a.fedc"]

    out = _contribute(cli, world, "a", ok=False)

    assert "error: team 'a' already contributed to round r1: each team contributes once" in out
    assert f"{world['url']}/contributions/a.fedc" in out  # the URL, not a temporary folder
    assert _objects(s3_endpoint, world["url"])["contributions/a.fedc"] == first


def test_a_contribution_written_meanwhile_is_never_overwritten(
    world, fed_hub, s3_endpoint, tmp_path
) -> None:
    """Two machines contributing as one team at once: the conditional write lets one win."""
    from hub.config import load_settings

    home = world["homes"]["a"]
    settings = load_settings(home, hub=fed_hub)
    with (
        pytest.raises(ValidationError) as refused,
        staged_round(
            world["url"], "contribute", team="a", hub=fed_hub, settings=settings, home=home
        ) as local,
    ):
        (local / "contributions" / "a.fedc").write_bytes(b"this machine's")
        s3_endpoint.client().put_object(  # the other machine finishes first
            Bucket=world["url"].split("/")[2],
            Key=world["url"].split("/", 3)[3] + "/contributions/a.fedc",
            Body=b"the other machine's",
        )

    assert str(refused.value) == (
        f"{world['url']}/contributions/a.fedc exists (written meanwhile by another process): "
        "team 'a' already contributed: each team contributes once"
    )
    assert _objects(s3_endpoint, world["url"])["contributions/a.fedc"] == b"the other machine's"


def test_a_refused_command_uploads_nothing(cli, world, s3_endpoint) -> None:
    out = _contribute(cli, world, "a", key_holder="b", ok=False)

    assert "is signed by team 'hold', not by the key holder you expect ('b')" in out
    assert sorted(_objects(s3_endpoint, world["url"])) == ["public.context", "round.json"]


def test_a_round_id_taken_in_the_bucket_is_refused(cli, world) -> None:
    out = cli(
        world["homes"]["hold"],
        "fed",
        "init",
        *world["rd"],
        "--teams",
        "a,b",
        "--team",
        "hold",
        *PARAMS,
        ok=False,
    )
    assert f"error: round r1 already exists in {world['url']}: pick a new round id" in out


def test_fed_rounds_dir_as_a_url_puts_each_round_under_it() -> None:
    from types import SimpleNamespace

    from hub.fed.rounddir import RoundDirParam, round_url

    def state(rounds_dir):
        return SimpleNamespace(settings=SimpleNamespace(get=lambda key: rounds_dir))

    param = RoundDirParam()
    assert round_url(state("s3://team-rounds/fed/"), None, "r7") == "s3://team-rounds/fed/r7"
    assert round_url(state(""), param.convert("s3://b/x/", None, None), "r7") == "s3://b/x"
    assert (
        round_url(state("s3://team-rounds/fed"), param.convert("shared/r7", None, None), "r7")
        is None
    )
    with pytest.raises(ValidationError, match="round id '../x' is not valid"):
        round_url(state("s3://team-rounds/fed"), None, "../x")
