"""ffa over the two trained fixture adapters (frozen A at one shared seed): exact under CKKS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import plugins.ckks
from hub.fed.finalize import decrypt_aggregate
from hub.fed.modes import B_SUFFIX
from hub.fed.round import open_round, secret_context
from hub.plugins import Hub
from hub.types import AdapterPayload


@pytest.fixture(scope="module")
def trained_round(
    trained_adapters: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    signers: Any,
    verifier: Any,
    round_runner: Any,
) -> dict[str, Any]:
    agg = Hub(builtins=False, extra=[("ckks", plugins.ckks)]).aggregators["ckks"]
    ads = {
        team: AdapterPayload.from_dir(trained_adapters[task], task)
        for team, task in (("a", "upper"), ("b", "reverse"))
    }
    rdir, kdir = round_runner(
        agg,
        tmp_path_factory.mktemp("trained"),
        signers,
        verifier,
        ads,
        params=None,
        weights={"a": 0.5, "b": 0.5},
    )
    rnd = open_round(rdir)
    meta, vector, frozen = decrypt_aggregate(rnd, agg.codec, secret_context(kdir, rnd))
    return {"meta": meta, "vector": vector, "frozen": frozen, "adapters": ads}


def test_trained_adapters_share_a_byte_for_byte(trained_round: dict) -> None:
    upper, reverse = (ad.tensors() for ad in trained_round["adapters"].values())
    a_names = [n for n in upper if n.endswith(".lora_A.weight")]
    assert a_names and all(
        upper[n].numpy().tobytes() == reverse[n].numpy().tobytes() for n in a_names
    )


def test_ckks_ffa_of_trained_adapters_is_average_of_b(trained_round: dict) -> None:
    upper, reverse = (ad.tensors() for ad in trained_round["adapters"].values())
    want = np.concatenate(
        [
            0.5 * upper[e["name"]].double().reshape(-1).numpy()
            + 0.5 * reverse[e["name"]].double().reshape(-1).numpy()
            for e in trained_round["meta"]["layout"]
        ]
    )
    assert all(e["name"].endswith(B_SUFFIX) for e in trained_round["meta"]["layout"])
    assert np.abs(trained_round["vector"] - want).max() < 1e-6
