"""Known answers: the NF4 code values and a quantize/dequantize round trip through bitsandbytes."""

from __future__ import annotations

import pytest

from plugins.nf4.codebook import nf4_code_values, nf4_offset

# As printed in the QLoRA paper, appendix E.
PAPER_NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]  # fmt: skip


def test_offset_is_the_paper_delta():
    assert nf4_offset() == pytest.approx(0.9677083, abs=1e-7)


def test_code_values_match_the_paper_table():
    # the paper rounds its offset to 0.9677083 and its values to float32
    assert nf4_code_values().tolist() == pytest.approx(PAPER_NF4, abs=1e-6)


def test_code_values_are_asymmetric_with_an_exact_zero():
    values = nf4_code_values()
    assert values[7].item() == 0.0
    assert (values > 0).sum().item() == 8 and (values < 0).sum().item() == 7
    assert values[0].item() == -1.0 and values[-1].item() == 1.0


def test_code_values_equal_bitsandbytes_nf4_table():
    import bitsandbytes.functional as F
    import torch

    table = F.get_4bit_type("nf4", device="cpu").double()
    torch.testing.assert_close(nf4_code_values(), table, atol=1e-6, rtol=0)


@pytest.fixture
def known_block():
    """One block of 64: the 16 code values times 2, then ±0.5·2 and 0.05·2, 0.03·2, zeros."""
    import bitsandbytes.functional as F
    import torch

    block = torch.zeros(64)
    block[:16] = F.get_4bit_type("nf4", device="cpu") * 2  # bitsandbytes' float32 table
    block[16:20] = torch.tensor([1.0, -1.0, 0.1, 0.06])
    return block.view(1, 64)


def test_quantize_packs_two_code_indices_per_byte(known_block):
    import bitsandbytes.functional as F

    packed, state = F.quantize_4bit(known_block, blocksize=64, quant_type="nf4")
    # indices 0..15 pack high-nibble first: 0x01, 0x23, ..., 0xEF; then 0.5 -> 12, -0.5 -> 2,
    # 0.05 -> 8 (0.0796 is nearer than 0), 0.03 -> 7 (zero)
    assert packed.flatten()[:10].tolist() == [0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF,
                                              0xC2, 0x87]  # fmt: skip
    assert state.absmax.tolist() == [2.0]


def test_dequantize_returns_the_scaled_code_values(known_block):
    import bitsandbytes.functional as F
    import torch

    packed, state = F.quantize_4bit(known_block, blocksize=64, quant_type="nf4")
    restored = F.dequantize_4bit(packed, state).flatten()
    assert torch.equal(restored[:16], known_block.flatten()[:16])
    code = F.get_4bit_type("nf4", device="cpu")
    assert restored[16:20].tolist() == (code[[12, 2, 8, 7]] * 2).tolist()
    assert restored[20:].abs().sum().item() == 0.0


def test_double_quant_keeps_a_single_block_exact(known_block):
    import bitsandbytes.functional as F
    import torch

    packed, state = F.quantize_4bit(
        known_block, blocksize=64, quant_type="nf4", compress_statistics=True
    )
    assert state.nested is True and state.absmax.dtype == torch.uint8
    restored = F.dequantize_4bit(packed, state).flatten()
    assert torch.equal(restored[:16], known_block.flatten()[:16])
