"""LoRA dropout for CPU training: the same Bernoulli mask as ``nn.Dropout``, drawn for less.

PEFT applies dropout to the input of every LoRA module (28 of them per step
on the embedded base). On CPU, ``nn.Dropout`` spends most of its time in
``bernoulli_``, which draws a 32-bit random number per element; it was 14%
of a training step in a profile. A keep decision needs far fewer random bits:
:class:`LoraDropout` draws one 64-bit number from torch's generator per four
elements and compares each 16-bit lane with a threshold, so every element is
kept with probability ``1 - p`` (``p`` rounded to a multiple of 2^-16, a
change of at most 7.6e-6) independently of the others, and kept values are
scaled by ``1 / (1 - p)``, exactly as ``nn.Dropout`` does. The draws come from
torch's default generator, so ``torch.manual_seed`` (the Trainer's ``seed``)
makes them reproducible.

:func:`use_lora_dropout` swaps it into a ``PeftModel`` on CPU; on CUDA,
``nn.Dropout`` is a fused kernel already and is left alone.
"""

from __future__ import annotations

from typing import Any

import torch

LANES = 4
"""16-bit keep decisions per 64-bit random draw."""


def keep_mask(shape: torch.Size | tuple[int, ...], p: float) -> torch.Tensor:
    """A bool tensor of ``shape``: each element ``True`` with probability ``1 - p``, independently."""
    n = 1
    for size in shape:
        n *= size
    draws = torch.randint(-(2**63), 2**63 - 1, (-(-n // LANES),), dtype=torch.int64)
    lanes = draws.view(torch.int16)[:n].view(shape)  # uniform over -32768..32767
    return lanes >= -32768 + round(p * 65536)


class _MaskedScale(torch.autograd.Function):
    """``x * keep / (1 - p)`` forward and backward, in one fused kernel each way.

    ``aten::native_dropout_backward`` is the kernel ``nn.Dropout`` itself uses
    for its backward (mask times scale); here it serves both directions.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.ops.aten.native_dropout_backward(x, keep, scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return torch.ops.aten.native_dropout_backward(grad, keep, ctx.scale), None, None


class LoraDropout(torch.nn.Module):
    """Inverted dropout with probability ``p`` (see the module docstring); identity in eval mode.

    Args:
        p: drop probability, 0 <= p < 1.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return _MaskedScale.apply(x, keep_mask(x.shape, self.p), 1.0 / (1.0 - self.p))


def use_lora_dropout(peft_model: Any) -> int:
    """Replace the ``nn.Dropout`` of every CPU LoRA module with :class:`LoraDropout`.

    Returns:
        How many were replaced (0 on CUDA or with ``dropout = 0``, where PEFT
        uses ``nn.Identity``).
    """
    replaced = 0
    for module in peft_model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        weight = next(module.parameters(), None)
        if weight is not None and weight.device.type != "cpu":
            continue
        for name, old in list(dropouts.items()):
            if type(old) is torch.nn.Dropout:
                new = LoraDropout(old.p)
                new.train(old.training)
                dropouts[name] = new
                replaced += 1
    return replaced
