"""``qlora-hub train --init-adapter``: start training from a stored adapter's weights.

Federated training chains rounds: round k+1 starts every team from round k's
merged adapter. The adapter's LoRA tensors are loaded into the freshly attached
LoRA layers; with ``--freeze-a`` its A matrices (the shared frozen A that the
merge kept byte for byte) replace the seeded ones and stay frozen. The run's
manifest records ``init_adapter: {"ref", "sha256"}`` (sha256 of the adapter's
weights file), which ``fed contribute`` checks against the round's start.
"""

from __future__ import annotations

import hashlib
from typing import Any

from hub.errors import ValidationError
from hub.types import AdapterPayload


def adapter_weights_sha256(payload: AdapterPayload) -> str:
    """sha256 of the adapter's safetensors file: how chained rounds name an adapter."""
    return hashlib.sha256(payload.files[AdapterPayload.WEIGHTS]).hexdigest()


def _check_config(payload: AdapterPayload, opts: Any) -> None:
    config = payload.config()
    want = {"r": opts.r, "lora_alpha": opts.alpha, "use_rslora": bool(opts.use_rslora)}
    got = {
        "r": config.get("r"),
        "lora_alpha": config.get("lora_alpha"),
        "use_rslora": bool(config.get("use_rslora")),
    }
    diffs = [f"{k} {got[k]!r} vs {want[k]!r}" for k in want if got[k] != want[k]]
    if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora") or opts.use_dora:
        diffs.append("only plain LoRA adapters (no DoRA) can start a run")
    if diffs:
        raise ValidationError(
            f"--init-adapter {payload.ref or payload.name} does not match this run "
            f"({'; '.join(diffs)}): train with the adapter's --r, --alpha and --use-rslora"
        )


def load_init_adapter(model: Any, payload: AdapterPayload, opts: Any) -> dict[str, str]:
    """Copy ``payload``'s LoRA tensors into ``model`` (a PeftModel); return what to record.

    Tensor names and shapes must be exactly the run's (same base, targets and
    rank); otherwise nothing is loaded and the first difference is named.

    Returns:
        ``{"ref": NAME@VERSION or name, "sha256": weights-file sha256}``.
    """
    import torch
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    _check_config(payload, opts)
    have = get_peft_model_state_dict(model)
    given = payload.tensors()
    missing = sorted(set(have) - set(given))
    extra = sorted(set(given) - set(have))
    shape = next((k for k in sorted(have) if k in given and given[k].shape != have[k].shape), None)
    if missing or extra or shape:
        what = (
            f"missing {missing[0]}"
            if missing
            else f"unexpected {extra[0]}"
            if extra
            else f"{shape} is {list(given[shape].shape)}, the run needs {list(have[shape].shape)}"
        )
        raise ValidationError(
            f"--init-adapter {payload.ref or payload.name} does not fit this run ({what}): "
            "train on the same base with the same --target-modules and --r"
        )
    with torch.no_grad():
        cast = {k: v.to(have[k].dtype) for k, v in given.items()}
        set_peft_model_state_dict(model, cast)
    return {"ref": str(payload.ref or payload.name), "sha256": adapter_weights_sha256(payload)}
