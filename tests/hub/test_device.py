"""The device setting: ``--device auto|cpu|cuda|cuda:N`` (setting ``hub.device``) and its helpers.

This machine has no GPU, so the CUDA cases are the refusals and the pure functions.
"""

from __future__ import annotations

import pytest
import torch

from hub.config import load_settings
from hub.errors import ConfigError
from hub.models import default_compute_dtype, model_device, resolve_device

NO_CUDA = "no CUDA device is visible (torch.cuda.is_available() is False); use --device cpu"
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusals")


def _native_bf16() -> bool:
    from pathlib import Path

    flags = Path("/proc/cpuinfo").read_text()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def test_auto_and_cpu_resolve_to_the_cpu_without_a_gpu() -> None:
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("value", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_a_visible_gpu_is_one_line_naming_the_fix(value) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_device(value)
    assert str(err.value) == f"--device {value}: {NO_CUDA}"


@pytest.mark.parametrize("value", ["gpu", "cuda:x", "cuda:", "mps:0", "0"])
def test_a_value_of_another_form_is_refused_listing_the_choices(value) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_device(value)
    assert str(err.value) == f"--device {value}: not a device; use auto, cpu, cuda or cuda:N"


def test_compute_dtype_follows_the_device_not_only_what_is_visible() -> None:
    cpu = "bfloat16" if _native_bf16() else "float32"
    assert default_compute_dtype("cpu") == cpu
    assert default_compute_dtype(torch.device("cpu")) == cpu
    assert default_compute_dtype() == cpu  # auto: the CPU here
    # a GPU computes in bf16, named whether or not one is visible on this machine
    assert default_compute_dtype("cuda") == "bfloat16"
    assert default_compute_dtype("cuda:1") == "bfloat16"
    assert default_compute_dtype(torch.device("cuda", 0)) == "bfloat16"


def test_compute_dtype_of_a_bad_device_is_the_device_error() -> None:
    with pytest.raises(ConfigError, match="^--device tpu: not a device"):
        default_compute_dtype("tpu")


def test_model_device_reads_the_first_parameter() -> None:
    assert model_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(torch.nn.Linear(2, 2, device="meta")) == torch.device("meta")
    assert model_device(torch.nn.Identity()) == torch.device("cpu")


def test_setting_defaults_to_auto_and_reads_the_environment(tmp_path, monkeypatch) -> None:
    assert load_settings(tmp_path).get("hub.device") == "auto"
    monkeypatch.setenv("QLORA_HUB_DEVICE", "cuda:1")
    settings = load_settings(tmp_path)
    assert (settings.get("hub.device"), settings.sources["hub.device"]) == (
        "cuda:1",
        "$QLORA_HUB_DEVICE",
    )


def test_a_quantizer_that_takes_a_device_gets_it_and_one_that_does_not_is_not_passed_it() -> None:
    from hub.models import load_on_device

    calls = []

    def with_device(source, options, device=None):
        calls.append(("with", device))
        return torch.nn.Linear(2, 2)

    def without_device(source, options):
        calls.append(("without",))
        return torch.nn.Linear(2, 2)

    assert model_device(load_on_device(with_device, "src", {}, device="cpu")).type == "cpu"
    assert model_device(load_on_device(without_device, "src", {}, device="auto")).type == "cpu"
    assert calls == [("with", torch.device("cpu")), ("without",)]
    with pytest.raises(ConfigError, match="^--device cuda: no CUDA"):
        load_on_device(with_device, "src", {}, device="cuda")
    assert len(calls) == 2  # refused before the quantizer ran
