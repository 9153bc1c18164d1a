"""The nf4 quantizers and the pre-quantized loaders put every tensor on the device they are given."""

from __future__ import annotations

import pytest
import torch

from hub.errors import ConfigError
from hub.models import load_base
from hub.plugins import Hub
from plugins.nf4.direct import load_direct

NO_CUDA = "no CUDA device is visible (torch.cuda.is_available() is False); use --device cpu"


def _devices(model) -> set[str]:
    """Device types of every parameter, buffer and 4-bit quantization-state tensor."""
    out = {t.device.type for t in (*model.parameters(), *model.buffers())}
    for p in model.parameters():
        qs = getattr(p, "quant_state", None)
        if qs is not None:
            out |= {qs.absmax.device.type, qs.code.device.type}
            if qs.state2 is not None:
                out |= {qs.state2.absmax.device.type, qs.state2.code.device.type}
    return out


@pytest.fixture(scope="module")
def hub() -> Hub:
    return Hub()


def test_direct_loader_places_weights_quant_state_and_buffers_on_the_device(nf4_checkpoint):
    # meta stands in for a GPU here: nothing may stay behind on the CPU
    model = load_direct(nf4_checkpoint, torch.device("meta"))
    assert model is not None
    assert _devices(model) == {"meta"}
    four_bit = [p for p in model.parameters() if hasattr(p, "quant_state")]
    assert len(four_bit) == 28 and all(p.quant_state.state2 is not None for p in four_bit)


@pytest.mark.parametrize("kind", ["checkpoint", "source"])
def test_load_base_with_device_cpu_puts_everything_on_the_cpu(
    hub, kind, nf4_checkpoint, embedded_base
):
    source = nf4_checkpoint if kind == "checkpoint" else embedded_base
    loaded = load_base(hub, source, device="cpu")
    assert loaded.device == torch.device("cpu")
    assert _devices(loaded.model) == {"cpu"}
    loader = loaded.model.qlora_hub_quant.get("loader")
    assert loader == ("direct" if kind == "checkpoint" else None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
@pytest.mark.parametrize("kind", ["checkpoint", "source"])
def test_load_base_on_cuda_without_a_gpu_fails_before_loading(
    hub, kind, nf4_checkpoint, embedded_base
):
    source = nf4_checkpoint if kind == "checkpoint" else embedded_base
    with pytest.raises(ConfigError) as err:
        load_base(hub, source, device="cuda")
    assert str(err.value) == f"--device cuda: {NO_CUDA}"


def test_quantizer_load_takes_the_device_and_its_auto_compute_dtype(quantizers, embedded_base):
    model = quantizers["nf4"].load(embedded_base, {"compute_dtype": "auto"}, device="cpu")
    from hub.models import default_compute_dtype

    assert _devices(model) == {"cpu"}
    assert model.qlora_hub_quant["options"]["compute_dtype"] == default_compute_dtype("cpu")
