"""A LoRA adapter method on PEFT: the smallest complete AdapterMethod."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from hub.errors import ValidationError
from hub.types import AdapterPayload


class TinyLora:
    name = "tiny_lora"
    description = "Example: PEFT LoRA r=4 on q_proj and v_proj"

    def attach(self, model, options):
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=int(options.get("r", 4)), lora_alpha=8,
                            target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")  # fmt: skip
        return get_peft_model(model, config)

    def load(self, model, adapter, adapter_name):
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

        config = LoraConfig(**{k: v for k, v in adapter.config().items()
                               if k in ("r", "lora_alpha", "target_modules", "task_type")})  # fmt: skip
        peft_model = get_peft_model(model, config, adapter_name=adapter_name)
        tensors = adapter.tensors()  # safetensors bytes only; nothing unpickled
        expected = {k for k in peft_model.state_dict() if "lora_" in k and adapter_name in k}
        wanted = {k.replace(".weight", f".{adapter_name}.weight") for k in tensors}
        missing = sorted(expected - wanted)
        if missing:
            raise ValidationError(f"adapter {adapter.name} is missing {len(missing)} tensors")
        set_peft_model_state_dict(peft_model, tensors, adapter_name=adapter_name)
        return peft_model

    def save(self, model, out_dir):
        out_dir = Path(out_dir)
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp, safe_serialization=True)  # also writes a README.md
            out_dir.mkdir(parents=True, exist_ok=True)
            for name in (AdapterPayload.CONFIG, AdapterPayload.WEIGHTS):
                shutil.copyfile(Path(tmp) / name, out_dir / name)
        json.loads((out_dir / AdapterPayload.CONFIG).read_text())  # written and parseable
