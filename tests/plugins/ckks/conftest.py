"""Fixtures for the federated aggregation tests: teams with real keys, seeded PEFT adapters."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hub.types import AdapterPayload

# q_proj and v_proj of the embedded base (hidden 256), 2 layers: adapter-scale values.
MODULES = [
    f"base_model.model.model.layers.{i}.self_attn.{p}"
    for i in range(2)
    for p in ("q_proj", "v_proj")
]
SHAPE_IN, SHAPE_OUT = 256, 256
# Small but 128-bit-secure parameters for logic tests: N=4096 allows 109 bits; aggregation
# only adds, so one data prime and the special prime suffice (sums exact to ~1e-8).
LOGIC_PARAMS = {
    "poly_modulus_degree": 4096,
    "coeff_mod_bit_sizes": [60, 49],
    "global_scale_bits": 40,
}


def make_adapter(
    name: str,
    seed: int,
    *,
    r: int = 4,
    alpha: int = 8,
    a_seed: int | None = 7,
    modules: list[str] = MODULES,
    scale: float = 0.02,
) -> AdapterPayload:
    """A PEFT LoRA adapter with seeded random weights; A from ``a_seed`` (frozen-A) if given."""
    import torch
    from safetensors.torch import save

    gen = torch.Generator().manual_seed(seed)
    gen_a = torch.Generator().manual_seed(a_seed if a_seed is not None else seed + 1000)
    tensors = {}
    for m in modules:
        tensors[f"{m}.lora_A.weight"] = torch.randn(r, SHAPE_IN, generator=gen_a) * scale
        tensors[f"{m}.lora_B.weight"] = torch.randn(SHAPE_OUT, r, generator=gen) * scale
    config = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"],
        "layers_to_transform": [0, 1],
        "task_type": "CAUSAL_LM",
        "bias": "none",
        "base_model_name_or_path": "embedded",
        "fan_in_fan_out": False,
        "use_rslora": False,
    }
    files = {
        AdapterPayload.CONFIG: json.dumps(config).encode(),
        AdapterPayload.WEIGHTS: save(tensors),
    }
    return AdapterPayload(name=name, files=files)


@pytest.fixture(scope="session")
def fed_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home holding teams a, b, c and key holder ``hold`` (hybrid keys), all trusted."""
    from hub.teams import create_team

    home = tmp_path_factory.mktemp("fedkeys")
    for team in ("a", "b", "c", "hold"):
        create_team(home, team, passphrase=None)
    return home


@pytest.fixture(scope="session")
def signers(fed_keys: Path) -> dict[str, Callable[[bytes], Any]]:
    """Team -> signer."""
    from hub.fed.signing import team_signer

    return {t: team_signer(fed_keys, t) for t in ("a", "b", "c", "hold")}


@pytest.fixture(scope="session")
def verifier(fed_keys: Path) -> Callable[..., None]:
    """Checks signatures against the trust store of ``fed_keys``."""
    from hub.fed.signing import trust_store_verifier

    return trust_store_verifier(fed_keys)


@pytest.fixture(scope="session")
def adapters() -> dict[str, AdapterPayload]:
    """Three teams' adapters sharing a frozen A (seed 7), different B."""
    return {t: make_adapter(f"{t}-task", seed) for t, seed in (("a", 1), ("b", 2), ("c", 3))}


WEIGHTS = {"a": 0.5, "b": 0.3, "c": 0.2}


@pytest.fixture(scope="session")
def adapter_factory() -> Callable[..., AdapterPayload]:
    """:func:`make_adapter`: ``adapter_factory(name, seed, r=4, alpha=8, a_seed=7, ...)``."""
    return make_adapter


@pytest.fixture(scope="session")
def round_runner() -> Callable[..., tuple[Path, Path]]:
    """:func:`run_round`: init, every team contributes, aggregate."""
    return run_round


@pytest.fixture(scope="session")
def logic_params() -> dict[str, Any]:
    """Small 128-bit-secure CKKS parameters (N=4096) for tests about logic, not precision."""
    return dict(LOGIC_PARAMS)


def run_round(
    agg: Any,
    root: Path,
    signers: dict,
    verifier: Any,
    adapters: dict[str, AdapterPayload],
    *,
    mode: str = "ffa",
    params: dict | None = LOGIC_PARAMS,
    round_id: str = "r1",
    weights: dict[str, float] = WEIGHTS,
) -> tuple[Path, Path]:
    """init + contribute for every team + aggregate; returns ``(round_dir, key_dir)``."""
    rdir, kdir = root / "round" / round_id, root / "keys" / round_id
    agg.init_round(
        rdir,
        round_id=round_id,
        teams=list(adapters),
        mode=mode,
        key_dir=kdir,
        params=params,
        key_holder="hold",
        sign=signers["hold"],
    )
    for team, adapter in adapters.items():
        agg.contribute(
            rdir,
            team=team,
            adapter=adapter,
            weight=weights[team],
            sign=signers[team],
            verify=verifier,
        )
    agg.aggregate(rdir, verify=verifier)
    return rdir, kdir
