"""What an optimizer holds and what actually ran: the core's half of :class:`hub.types.OptimizerFactory`.

The trainer reports both for any factory; a factory may add detail (paging,
state precision, a fallback it took) with an optional ``describe(optimizer)``
method returning a mapping.
"""

from __future__ import annotations

from typing import Any


def unwrap(optimizer: Any) -> Any:
    """The optimizer itself (accelerate wraps the one the Trainer steps in ``.optimizer``)."""
    return getattr(optimizer, "optimizer", optimizer)


def optimizer_state_bytes(optimizer: Any) -> int:
    """Bytes held in the optimizer's state tensors (moments, quantization maps, absmax)."""
    import torch

    return sum(
        v.numel() * v.element_size()
        for state in unwrap(optimizer).state.values()
        for v in state.values()
        if torch.is_tensor(v) and v.dim() > 0
    )


def describe_optimizer(factory: Any, optimizer: Any) -> dict[str, Any]:
    """What ran, after at least one step: at least ``requested``, ``ran`` and ``state_bytes``.

    ``factory.describe(optimizer)`` (optional) adds or overrides keys, e.g.
    ``paged``, ``state_bits`` and a ``note`` when what ran differs from the request.
    """
    opt = unwrap(optimizer)
    describe = getattr(factory, "describe", None)
    info = dict(describe(opt)) if callable(describe) else {}
    info.setdefault("requested", factory.name)
    info.setdefault("ran", factory.name)
    info.setdefault("state_bytes", optimizer_state_bytes(opt))
    return info
