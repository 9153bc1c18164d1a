"""Seeded random PEFT LoRA adapters on the embedded base (stand-ins until trained ones exist)."""

from __future__ import annotations

from pathlib import Path

from hub.types import AdapterPayload

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_random_adapter(base_dir: Path, out: Path, seed: int, r: int = 8) -> Path:
    """Write a PEFT LoRA directory whose A and B are seeded random (B non-zero, so it acts)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS, lora_dropout=0.0)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.08)
    peft_model.save_pretrained(out)
    return out


def random_payload(base_dir: Path, tmp: Path, name: str, seed: int, r: int = 8) -> AdapterPayload:
    """A random adapter as an in-memory :class:`AdapterPayload` named ``name``."""
    path = make_random_adapter(base_dir, tmp / f"{name}-{seed}", seed, r)
    return AdapterPayload.from_dir(path, name=name)
