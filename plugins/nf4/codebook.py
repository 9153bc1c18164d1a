"""The NF4 code values, built as the QLoRA paper builds them.

NF4 is the 4-bit data type whose 16 values are quantiles of N(0, 1),
rescaled to [-1, 1], so each bin holds an equal share of normally
distributed weights. It is asymmetric so that zero is represented exactly:
8 quantiles for the positive half, 7 for the negative half, and 0
(Dettmers et al. 2023, "QLoRA", section 3; bitsandbytes ``create_normal_map``).
"""

from __future__ import annotations

from typing import Any

NF4_BITS = 4


def nf4_offset(bits: int = NF4_BITS) -> float:
    """Outermost probability: 1 - δ with δ = ½(1/(2·(2^k - 1)) + 1/(2·2^k)).

    Using the average of the two halves' half-bin widths keeps ±1 finite
    (the N(0, 1) quantile of 1 is infinite).
    """
    n = 2**bits
    return 1 - 0.5 * (1 / (2 * (n - 1)) + 1 / (2 * n))


def nf4_code_values(bits: int = NF4_BITS) -> Any:
    """The 2^k NF code values (float64, ascending), from ``torch.distributions.Normal.icdf``.

    Returns:
        A tensor of 16 values for k=4: -1, ..., 0 (exactly), ..., 1.
    """
    import torch
    from torch.distributions import Normal

    normal = Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    half = 2 ** (bits - 1)
    offset = nf4_offset(bits)
    # 2^(k-1) + 1 evenly spaced probabilities from the offset down to 0.5, the last (0.5 -> 0) dropped
    positive = normal.icdf(torch.linspace(offset, 0.5, half + 1, dtype=torch.float64)[:-1])
    negative = -normal.icdf(torch.linspace(offset, 0.5, half, dtype=torch.float64)[:-1])
    values = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return values / values.max()
