"""The built-in engine ``hf``: a transformers model, the gathered-LoRA bank and the
continuous-batching worker (:class:`server.engine.Engine`) behind :class:`hub.engines.Engine`.

Registered by the ``server`` plugin through ``register_engines`` like any other engine.
"""

from __future__ import annotations

from typing import Any

import torch

from hub.engines import AdapterRefused
from hub.errors import ValidationError
from hub.models import LoadedBase
from hub.types import AdapterRef
from server.engine import Engine
from server.lora import LoRABank, parse_adapter
from server.model import compute_dtype, load_served_base


class TensorsOf:
    """An adapter given in memory (config + PEFT-named tensors), read like a payload by
    :func:`server.lora.parse_adapter`; nothing is copied or decoded again."""

    def __init__(self, ref: AdapterRef | str, config: dict[str, Any], tensors: dict[str, Any]):
        self.ref, self._config, self._tensors = ref, config, tensors

    def config(self) -> dict[str, Any]:
        """The ``adapter_config.json`` dict."""
        return self._config

    def tensors(self) -> dict[str, Any]:
        """The PEFT-named tensors."""
        return self._tensors


def eos_ids_of(tokenizer: Any) -> set[int]:
    """The tokens that end a completion: EOS, and ``<|end|>`` (chat turns) when the
    tokenizer has it."""
    eos = {tokenizer.eos_token_id}
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    if isinstance(end, int) and end != tokenizer.unk_token_id:
        eos.add(end)
    return eos


class HFEngine(Engine):
    """The ``hf`` engine: :class:`server.engine.Engine` on a loaded base with its LoRA bank.

    Args:
        loaded: the base, loaded once (its linear layers get wrapped as adapters target them).
        max_batch: most rows decoding at once (``serve.max_batch``).
        max_queue: most waiting requests (``serve.max_queue``).
        max_adapters: bank slots allocated up front (``serve.max_resident``; more double it).
    """

    name = "hf"

    def __init__(
        self,
        loaded: LoadedBase,
        *,
        max_batch: int = 32,
        max_queue: int = 256,
        max_adapters: int = 8,
    ) -> None:
        # LoRA math in fp32, like PEFT; one slot per resident adapter, allocated once
        bank = LoRABank(loaded.model, torch.float32, max_adapters=max_adapters)
        tok = loaded.tokenizer
        super().__init__(
            loaded.model,
            tok,
            bank,
            max_batch=max_batch,
            max_queue=max_queue,
            eos_ids=eos_ids_of(tok),
        )
        self.context = int(getattr(loaded.model.config, "max_position_embeddings", 2048))
        self.base_fingerprint = loaded.fingerprint
        device = next(loaded.model.parameters()).device
        self.info = {
            "engine": self.name,
            "format": loaded.method,
            "device": device.type,
            "dtype": str(compute_dtype(loaded.model)).removeprefix("torch."),
            "max_batch": max_batch,
        }

    @property
    def alive(self) -> bool:
        """The worker thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def adapter_shapes(self) -> dict[str, tuple[int, int]]:
        """Every layer of the base an adapter may target: ``module -> (in, out)``."""
        return self.bank.shapes

    def add_adapter(self, key: str, config: dict[str, Any], tensors: dict[str, Any]) -> int:
        """Copy the adapter into a free slot of the bank; the slot is the handle."""
        try:
            parsed = parse_adapter(TensorsOf(key, config, tensors), self.bank.shapes)
            return self.bank.add(parsed["tensors"], parsed["rank"], parsed["scale"])
        except (ValidationError, ValueError) as exc:
            raise AdapterRefused(str(exc)) from None

    def remove_adapter(self, handle: int) -> None:
        """Free the slot (requests already decoding with it have finished: the server waits)."""
        self.bank.remove(handle)


def build_hf_engine(hub: Any, settings: Any, source: Any) -> HFEngine:
    """The ``hf`` engine factory: load ``source`` (unless it is a loaded base) and wrap it."""
    if isinstance(source, LoadedBase):
        loaded = source
    else:  # serve --device / setting hub.device
        loaded = load_served_base(hub, source, device=settings.get("hub.device"))
    return HFEngine(
        loaded,
        max_batch=settings.get("serve.max_batch"),
        max_queue=settings.get("serve.max_queue"),
        max_adapters=settings.get("serve.max_resident"),
    )
