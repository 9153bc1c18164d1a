"""``serve --device`` (setting ``hub.device``): the served base loads on the device asked for."""

from __future__ import annotations

import pytest
import torch

from hub.errors import ConfigError
from hub.testing import run_cli

NO_CUDA = "no CUDA device is visible (torch.cuda.is_available() is False); use --device cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
@pytest.mark.parametrize("value", ["cuda", "cuda:2"])
def test_serve_on_cuda_without_a_gpu_is_refused_before_loading(tmp_path, embedded_base, value):
    result = run_cli(
        "--home", str(tmp_path), "serve", "--base", str(embedded_base), "--storage", "local",
        "--device", value,
    )  # fmt: skip
    assert (result.exit_code, result.err) == (2, f"error: --device {value}: {NO_CUDA}\n")


def test_the_hf_engine_loads_the_base_on_the_device_of_the_setting(tmp_path, embedded_base):
    from hub.config import load_settings
    from hub.plugins import Hub
    from server.hf_engine import build_hf_engine

    hub = Hub()
    settings = load_settings(tmp_path, hub=hub)
    settings.override("hub.device", "cpu")
    engine = build_hf_engine(hub, settings, embedded_base)
    model = engine.model
    assert {t.device.type for t in (*model.parameters(), *model.buffers())} == {"cpu"}
    settings.override("hub.device", "gpu")
    with pytest.raises(ConfigError, match="^--device gpu: not a device"):
        build_hf_engine(hub, settings, embedded_base)
