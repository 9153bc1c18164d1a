"""``qlora-hub bench fed``: what CKKS costs over plaintext aggregation, measured in one run.

For each adapter shape and team count it runs a full ``ffa`` round (init,
every team contributes, aggregate, finalize's decryption) twice through the
same code path: once with the ``ckks`` codec and once with the ``plain``
reference, and reports seconds per million encrypted parameters, bytes on
the wire and the ratios. It also measures the merge-mode maths (the fedavg
gap and the dense SVD energy) on seeded adapter-scale updates.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from hub.cli import CliState, pass_state

# name -> (layers, {module: (out, in)}, r): ffa encrypts only B (out x r per module).
SHAPES: dict[str, tuple[int, dict[str, tuple[int, int]], int]] = {
    "embedded": (
        4,
        {
            **{f"self_attn.{m}": (256, 256) for m in ("q_proj", "k_proj", "v_proj", "o_proj")},
            "mlp.gate_proj": (768, 256),
            "mlp.up_proj": (768, 256),
            "mlp.down_proj": (256, 768),
        },
        16,
    ),
    "7b-qv": (32, {"self_attn.q_proj": (4096, 4096), "self_attn.v_proj": (4096, 4096)}, 16),
    "tiny": (1, {"self_attn.q_proj": (256, 256)}, 4),  # for smoke tests of this command
}


def synthetic_adapter(shape: str, seed: int, *, shared_a: bool = True) -> Any:
    """A seeded adapter-scale LoRA of ``shape`` (A from seed 0 when ``shared_a``)."""
    import torch
    from safetensors.torch import save

    from hub.types import AdapterPayload

    layers, modules, r = SHAPES[shape]
    gen_b = torch.Generator().manual_seed(seed)
    gen_a = torch.Generator().manual_seed(0 if shared_a else 10_000 + seed)
    tensors = {}
    for i in range(layers):
        for mod, (out_f, in_f) in modules.items():
            prefix = f"base_model.model.model.layers.{i}.{mod}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(r, in_f, generator=gen_a) / in_f**0.5
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_f, r, generator=gen_b) * 0.01
    config = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": 2 * r,
        "target_modules": sorted({m.split(".")[-1] for m in modules}),
    }
    files = {
        AdapterPayload.CONFIG: json.dumps(config).encode(),
        AdapterPayload.WEIGHTS: save(tensors),
    }
    return AdapterPayload(f"{shape}-{seed}", files)


def run_round(agg: Any, work: Path, shape: str, teams: int, signers: dict, verify: Any) -> dict:
    """One timed ffa round; returns timings, sizes and the decrypted sum."""
    from hub.fed.finalize import decrypt_aggregate
    from hub.fed.round import open_round, secret_context

    names = [f"t{i}" for i in range(teams)]
    rdir, kdir = work / "round", work / "keys"
    agg.init_round(
        rdir,
        round_id="bench",
        teams=names,
        mode="ffa",
        key_dir=kdir,
        key_holder="hold",
        sign=signers["hold"],
    )
    encrypt_s, sizes = 0.0, []
    for i, team in enumerate(names):
        adapter = synthetic_adapter(shape, i + 1)
        t0 = time.perf_counter()
        path = agg.contribute(
            rdir, team=team, adapter=adapter, weight=1 / teams, sign=signers[team], verify=verify
        )
        encrypt_s += time.perf_counter() - t0
        sizes.append(path.stat().st_size)
    t0 = time.perf_counter()
    out = agg.aggregate(rdir, verify=verify)
    aggregate_s = time.perf_counter() - t0
    rnd = open_round(rdir)
    t0 = time.perf_counter()
    meta, vector, _ = decrypt_aggregate(rnd, agg.codec, secret_context(kdir, rnd))
    decrypt_s = time.perf_counter() - t0
    public = (rdir / "public.context").stat().st_size
    return {
        "encrypt_s_per_team": encrypt_s / teams,
        "aggregate_s": aggregate_s,
        "decrypt_s": decrypt_s,
        "contribution_bytes": sizes[0],
        "aggregate_bytes": out.stat().st_size,
        "public_context_bytes": public,
        # every team downloads the public context and uploads its contribution;
        # the key holder downloads the aggregate.
        "wire_bytes": teams * public + sum(sizes) + out.stat().st_size,
        "n_values": meta["n_values"],
        "_vector": vector,
    }


def per_million(row: dict, n: int) -> dict:
    """Add ``*_s_per_mparam`` keys for the timed phases."""
    m = n / 1e6
    for key in ("encrypt_s_per_team", "aggregate_s", "decrypt_s"):
        row[
            key.replace("_s", "_s_per_mparam", 1)
            if key != "encrypt_s_per_team"
            else "encrypt_s_per_mparam_per_team"
        ] = row[key] / m
    return row


def mode_maths(shape: str, teams: int = 3) -> dict:
    """fedavg gap and dense energy for ``teams`` seeded updates with independent A."""
    import numpy as np

    from hub.fed.modes import decode_merged, encode_update, exact_sum, relative_gap

    ads = [synthetic_adapter(shape, i + 1, shared_a=False) for i in range(teams)]
    updates = [(a.tensors(), a.config(), 1 / teams) for a in ads]
    exact = exact_sum(updates)
    out = {"teams": teams, "shape": shape}
    for mode in ("fedavg", "dense"):
        total, layout, frozen = None, None, None
        for tensors, config, w in updates:
            layout, vec, frozen = encode_update(mode, tensors, config, w)
            total = vec if total is None else np.add(total, vec)
        tensors, config, report = decode_merged(mode, layout, total, frozen, ads[0].config())
        out[f"{mode}_relative_error"] = relative_gap(tensors, config, exact)
        if mode == "dense":
            out["dense_energy_kept"] = report["energy_kept"]
    return out


@click.command("fed")
@click.option("--json", "as_json", is_flag=True, help="Print JSON only.")
@click.option(
    "--shapes",
    default="embedded,7b-qv",
    show_default=True,
    help=f"Adapter shapes: {', '.join(SHAPES)}.",
)
@click.option("--teams", "team_counts", default="3,10", show_default=True, help="Team counts.")
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    default=None,
    help="Scratch directory for round files [default: a temp dir, removed after].",
)
@pass_state
def bench_fed(
    state: CliState, as_json: bool, shapes: str, team_counts: str, workdir: Path | None
) -> None:
    """Encrypt / aggregate / decrypt time per million parameters and bytes on the wire, ckks vs plain."""
    import numpy as np
    from rich.console import Console

    from hub.fed.signing import team_signer, trust_store_verifier
    from hub.teams import create_team

    console = Console(stderr=True, quiet=as_json)
    counts = [int(c) for c in team_counts.split(",")]
    scratch = Path(tempfile.mkdtemp(prefix="bench-fed-", dir=workdir))
    try:
        names = ["hold", *(f"t{i}" for i in range(max(counts)))]
        for name in names:
            create_team(scratch / "home", name, passphrase=None)
        signers = {n: team_signer(scratch / "home", n) for n in names}
        verify = trust_store_verifier(scratch / "home")
        results = []
        for shape in shapes.split(","):
            for teams in counts:
                row: dict[str, Any] = {"shape": shape, "mode": "ffa", "teams": teams}
                vectors = {}
                for name in ("plain", "ckks"):
                    console.log(f"{shape}: {teams} teams, {name}")
                    work = scratch / f"{shape}-{teams}-{name}"
                    agg = state.hub.aggregators[name]
                    r = run_round(agg, work, shape, teams, signers, verify)
                    shutil.rmtree(work)
                    vectors[name] = r.pop("_vector")
                    row["encrypted_parameters"] = r.pop("n_values")
                    row[name] = per_million(r, row["encrypted_parameters"])
                c, p = row["ckks"], row["plain"]
                row["max_abs_error_vs_plain"] = float(
                    np.abs(vectors["ckks"] - vectors["plain"]).max()
                )
                row["ckks_over_plain"] = {
                    k: c[k] / p[k] if p[k] else None
                    for k in ("encrypt_s_per_team", "aggregate_s", "decrypt_s", "wire_bytes")
                }
                results.append(row)
        maths = [mode_maths("tiny" if "tiny" in shapes.split(",") else "embedded")]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = {
        "benchmark": "fed",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "ckks_params": {
            "poly_modulus_degree": 8192,
            "coeff_mod_bit_sizes": [60, 40, 40, 60],
            "global_scale_bits": 40,
        },
        "rounds": results,
        "merge_modes": maths,
    }
    click.echo(json.dumps(report, indent=2))
