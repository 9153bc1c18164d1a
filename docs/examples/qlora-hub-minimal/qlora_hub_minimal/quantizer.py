"""A quantizer that keeps the base in bf16: the smallest complete Quantizer."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from hub.base import fingerprint
from hub.errors import HubError, IntegrityError, ValidationError
from hub.models import CHECKPOINT_MANIFEST

PROVENANCE = "qlora_hub_quant"  # attribute the trainer and `quantize` read provenance from


class Bf16Quantizer:
    name = "bf16_min"
    description = "Example: the base in bf16, no quantization"
    supported_options = ("compute_dtype",)  # which [quantize] settings `qlora-hub quantize` passes

    def load(self, source, options=None):
        import torch
        from transformers import AutoModelForCausalLM

        unknown = sorted(set(options or {}) - set(self.supported_options))
        if unknown:
            raise ValidationError(f"quantizer {self.name} has no option {', '.join(unknown)}")
        if not (Path(source) / "config.json").is_file():
            raise HubError(f"{source} is not a model directory: config.json is missing")
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16)
        setattr(model, PROVENANCE, {"method": self.name, "options": dict(options or {}),
                                    "source": str(source), "base_fingerprint": fingerprint(source)})  # fmt: skip
        return model

    def save(self, model, out_dir, manifest=None):
        out_dir = Path(out_dir)
        if out_dir.exists() and any(out_dir.iterdir()):
            raise ValidationError(f"{out_dir} is not empty: choose a new directory")
        tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
        model.save_pretrained(tmp, safe_serialization=True)
        provenance = getattr(model, PROVENANCE)
        files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp.iterdir()}
        full = {**provenance, **dict(manifest or {}), "files": files}
        (tmp / CHECKPOINT_MANIFEST).write_text(json.dumps(full, indent=1))
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)  # all or nothing
        return full

    def load_quantized(self, checkpoint):
        import torch
        from transformers import AutoModelForCausalLM

        checkpoint = Path(checkpoint)
        manifest = json.loads((checkpoint / CHECKPOINT_MANIFEST).read_text())
        on_disk = {p.name for p in checkpoint.iterdir()} - {CHECKPOINT_MANIFEST}
        if on_disk != set(manifest["files"]):
            raise IntegrityError(f"{checkpoint}: files {sorted(on_disk)} differ from the manifest")
        for name, digest in manifest["files"].items():
            if hashlib.sha256((checkpoint / name).read_bytes()).hexdigest() != digest:
                raise IntegrityError(f"{checkpoint / name} does not match its manifest sha256")
        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.bfloat16)
        setattr(model, PROVENANCE, {k: v for k, v in manifest.items() if k != "files"})
        return model

    def footprint(self, model):
        params = sum(p.numel() for p in model.parameters())
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        return {"bytes": nbytes, "bits_per_param": 8 * nbytes / params,
                "quantized_bits_per_param": 16.0}  # fmt: skip
