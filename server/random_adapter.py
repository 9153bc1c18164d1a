"""Seeded random LoRA adapters for benchmarks and demos (no training, built in memory)."""

from __future__ import annotations

import json
from pathlib import Path

from hub.types import AdapterPayload

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
"""The embedded base's (Llama's) linear layers; pass ``targets="all-linear"`` for any other."""


def random_lora_payload(
    base: Path,
    name: str,
    *,
    seed: int,
    r: int = 16,
    std: float = 0.08,
    targets: list[str] | str = TARGETS,
) -> AdapterPayload:
    """A PEFT LoRA on ``base`` with seeded random A and B (B non-zero, so it changes outputs).

    Built with PEFT and serialised with safetensors straight into memory.
    ``targets`` is PEFT's ``target_modules`` (a list of names, or ``"all-linear"``).
    """
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, lora_dropout=0.0)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for pname, param in peft_model.named_parameters():
            if "lora_B" in pname:
                param.normal_(0.0, std)
    state = {k: v.contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}
    return _payload(name, peft_model.peft_config["default"].to_dict(), state)


def random_lora_for_shapes(
    shapes: dict[str, tuple[int, int]],
    name: str,
    *,
    seed: int,
    r: int = 16,
    std: float = 0.02,
    targets: list[str] = TARGETS,
) -> AdapterPayload:
    """A PEFT LoRA payload built from layer shapes alone (no model load: fast on a 1B base).

    ``shapes`` maps module names to ``(in, out)`` (:attr:`server.lora.LoRABank.shapes`);
    every module whose last name part is in ``targets`` gets seeded random ``A`` and ``B``
    under PEFT's tensor names, so both the gathered bank and PEFT load it.
    """
    import torch
    from peft import LoraConfig

    gen = torch.Generator().manual_seed(seed)
    state = {}
    for module, (fan_in, fan_out) in sorted(shapes.items()):
        if module.rpartition(".")[2] not in targets:
            continue
        key = f"base_model.model.{module}"
        state[f"{key}.lora_A.weight"] = torch.randn(r, fan_in, generator=gen) / fan_in**0.5
        state[f"{key}.lora_B.weight"] = torch.randn(fan_out, r, generator=gen) * std
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, lora_dropout=0.0)
    return _payload(name, config.to_dict(), state)


def _payload(name: str, cfg: dict, state: dict) -> AdapterPayload:
    """``adapter_config.json`` (sets as sorted lists, no base path) and the safetensors."""
    from safetensors.torch import save

    cfg = {k: (sorted(v) if isinstance(v, set) else v) for k, v in cfg.items()}
    cfg["base_model_name_or_path"] = None
    files = {
        AdapterPayload.CONFIG: json.dumps(cfg, indent=2, default=str).encode(),
        AdapterPayload.WEIGHTS: save(state),
    }
    return AdapterPayload(name=name, files=files)
