"""Optimizer factories: bitsandbytes paged / 8-bit AdamW and plain torch AdamW.

bitsandbytes cannot page on CPU: a paged optimizer there silently keeps its
state as ordinary tensors (it only warns). On CUDA, bitsandbytes pages only the
state of parameters with at least 100,000 elements; a LoRA matrix is smaller
than that (``r x d``: 16 x 2048 = 32,768), so left alone a paged optimizer
would page nothing of a QLoRA run. The paged factories here page the state of
every CUDA parameter (:func:`page_every_state`). Each factory's ``describe``
(:func:`describe_optimizer`) looks at the state after a step and says what
actually ran; the trainer calls it through :func:`hub.optim.describe_optimizer`.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any

from hub.optim import optimizer_state_bytes, unwrap


class BnbAdamW:
    """An AdamW from ``bitsandbytes.optim`` (paged or not, 8- or 32-bit state)."""

    def __init__(self, name: str, cls_name: str, description: str) -> None:
        self.name = name
        self.cls_name = cls_name
        self.description = description

    def build(self, params: Iterable[Any], *, lr: float, weight_decay: float = 0.0) -> Any:
        """A ``bitsandbytes.optim.<cls_name>`` over ``params``."""
        import bitsandbytes as bnb

        cls = getattr(bnb.optim, self.cls_name)
        if self.cls_name.startswith("Paged"):
            cls = page_every_state(cls)
        opt = cls(list(params), lr=lr, weight_decay=weight_decay)
        opt.hub_requested = self.name
        return opt

    def describe(self, optimizer: Any) -> dict[str, Any]:
        """What ran (see :func:`describe_optimizer`)."""
        return describe_optimizer(optimizer)


@cache
def page_every_state(cls: type) -> type:
    """``cls`` (a paged bitsandbytes optimizer) paging the state of every CUDA parameter.

    bitsandbytes' ``get_state_buffer`` allocates paged (CUDA managed) memory
    only for parameters of 100,000 elements or more; this subclass does it for
    every parameter on a CUDA device, with the same calls. CPU parameters keep
    bitsandbytes' behaviour (ordinary tensors, with its warning).
    """
    import bitsandbytes.functional as F
    import torch

    class PageEveryState(cls):  # type: ignore[misc, valid-type]
        def get_state_buffer(self, p: Any, dtype: Any = torch.float32) -> Any:
            if not (self.is_paged and p.device.type == "cuda"):
                return super().get_state_buffer(p, dtype)
            buff = F.get_paged(*p.shape, dtype=dtype, device=p.device)
            F.fill(buff, 0)
            self.page_mng.paged_tensors.append(buff)
            return buff

    PageEveryState.__name__ = PageEveryState.__qualname__ = cls.__name__
    return PageEveryState


class TorchAdamW:
    """``torch.optim.AdamW`` with 32-bit state."""

    name = "adamw"
    description = "torch.optim.AdamW (32-bit state, no bitsandbytes)"

    def build(self, params: Iterable[Any], *, lr: float, weight_decay: float = 0.0) -> Any:
        """A ``torch.optim.AdamW`` over ``params``."""
        import torch

        opt = torch.optim.AdamW(list(params), lr=lr, weight_decay=weight_decay)
        opt.hub_requested = self.name
        return opt

    def describe(self, optimizer: Any) -> dict[str, Any]:
        """What ran (see :func:`describe_optimizer`)."""
        return describe_optimizer(optimizer)


FACTORIES = (
    BnbAdamW("paged_adamw_32bit", "PagedAdamW32bit", "bitsandbytes paged AdamW, 32-bit state"),
    BnbAdamW(
        "paged_adamw_8bit", "PagedAdamW8bit", "bitsandbytes paged AdamW, 8-bit blockwise state"
    ),
    BnbAdamW("adamw_8bit", "AdamW8bit", "bitsandbytes AdamW, 8-bit blockwise state (not paged)"),
    TorchAdamW(),
)
"""Every optimizer the ``paged`` plugin registers."""


def describe_optimizer(optimizer: Any) -> dict[str, Any]:
    """What ran: ``requested``, ``ran`` (the name of what actually ran), ``paged``, ``state_bits``,
    ``state_bytes`` and a ``note`` when it differs from the request.

    Call after at least one step (state is created lazily). Paging is read from
    the state tensors themselves (``is_paged`` is set only on real paged memory),
    so a CPU fallback is reported as such.
    """
    import torch

    optimizer = unwrap(optimizer)  # accelerate wraps the optimizer the Trainer steps
    requested = getattr(optimizer, "hub_requested", type(optimizer).__name__)
    tensors = [
        v
        for state in optimizer.state.values()
        for k, v in state.items()
        if torch.is_tensor(v) and k.startswith("state")
    ]
    paged = any(getattr(t, "is_paged", False) for t in tensors)
    bits = 8 if any(t.dtype == torch.uint8 for t in tensors) else 32
    asked_paged = bool(getattr(optimizer, "is_paged", False))
    if isinstance(optimizer, torch.optim.AdamW):
        ran = "adamw"
    else:
        ran = ("paged_" if paged else "") + f"adamw_{bits}bit"
    info = {
        "requested": requested,
        "ran": ran,
        "paged": paged,
        "state_bits": bits,
        "state_bytes": optimizer_state_bytes(optimizer),
    }
    if asked_paged and not paged:
        device = tensors[0].device.type if tensors else "cpu"
        info["note"] = f"bitsandbytes cannot page on {device}: fell back to non-paged state"
    return info
