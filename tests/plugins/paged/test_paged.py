"""The ``paged`` optimizers: contract, and an honest report of what ran on this device."""

from __future__ import annotations

import pytest
import torch

from hub.testing import OptimizerFactoryContract
from plugins.paged.factories import FACTORIES, describe_optimizer

BY_NAME = {f.name: f for f in FACTORIES}


class TestPagedAdamW32bitContract(OptimizerFactoryContract):
    @pytest.fixture
    def optimizer_factory(self):
        return BY_NAME["paged_adamw_32bit"]


class TestPagedAdamW8bitContract(OptimizerFactoryContract):
    @pytest.fixture
    def optimizer_factory(self):
        return BY_NAME["paged_adamw_8bit"]


class TestAdamW8bitContract(OptimizerFactoryContract):
    @pytest.fixture
    def optimizer_factory(self):
        return BY_NAME["adamw_8bit"]


class TestTorchAdamWContract(OptimizerFactoryContract):
    @pytest.fixture
    def optimizer_factory(self):
        return BY_NAME["adamw"]


def _stepped(name: str):
    param = torch.nn.Parameter(torch.randn(64, 64))
    opt = BY_NAME[name].build([param], lr=1e-3)
    param.grad = torch.randn_like(param)
    with pytest.warns(UserWarning) if name.startswith("paged") else _nothing():
        opt.step()
    return opt


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_registers_four_optimizers(hub_factory) -> None:
    import plugins.paged

    hub = hub_factory(plugins.paged)
    assert list(hub.optimizers) == ["adamw", "adamw_8bit", "paged_adamw_32bit", "paged_adamw_8bit"]


def test_paged_32bit_on_cpu_reports_the_non_paged_fallback() -> None:
    info = describe_optimizer(_stepped("paged_adamw_32bit"))
    assert info == {
        "requested": "paged_adamw_32bit",
        "ran": "adamw_32bit",
        "paged": False,
        "state_bits": 32,
        "state_bytes": 2 * 64 * 64 * 4,
        "note": "bitsandbytes cannot page on cpu: fell back to non-paged state",
    }


def test_paged_8bit_on_cpu_keeps_8bit_state_without_paging() -> None:
    info = describe_optimizer(_stepped("paged_adamw_8bit"))
    assert (info["ran"], info["paged"], info["state_bits"]) == ("adamw_8bit", False, 8)
    assert "note" in info


def test_adamw_8bit_reports_itself_without_a_note() -> None:
    info = describe_optimizer(_stepped("adamw_8bit"))
    assert (info["requested"], info["ran"], info["state_bits"]) == ("adamw_8bit", "adamw_8bit", 8)
    assert "note" not in info


def test_8bit_state_is_one_byte_per_moment_plus_quantization_maps() -> None:
    s8 = describe_optimizer(_stepped("adamw_8bit"))["state_bytes"]
    s32 = describe_optimizer(_stepped("adamw"))["state_bytes"]
    assert s32 == 2 * 64 * 64 * 4
    # two uint8 moments, two 256-entry fp32 code maps, one fp32 absmax per 256-value block each
    assert s8 == 2 * 64 * 64 + 2 * 256 * 4 + 2 * (64 * 64 // 256) * 4


def test_torch_adamw_reports_adamw() -> None:
    info = describe_optimizer(_stepped("adamw"))
    assert (info["requested"], info["ran"], info["paged"]) == ("adamw", "adamw", False)


def test_trainer_reads_what_ran_through_the_core(hub_factory):
    """The trainer asks hub.optim (never this plugin's module) what ran; the factory's
    describe() supplies the paging detail."""
    import plugins.paged
    from hub.optim import describe_optimizer as core_describe

    hub = hub_factory(plugins.paged)
    opt = _stepped("paged_adamw_8bit")
    assert core_describe(hub.optimizers["paged_adamw_8bit"], opt) == describe_optimizer(opt)


def test_core_describes_a_factory_without_describe():
    import torch

    from hub.optim import describe_optimizer as core_describe

    class Sgd:
        name = "sgd"
        description = "plain SGD"

        def build(self, params, *, lr, weight_decay=0.0):
            return torch.optim.SGD(params, lr=lr, momentum=0.9)

    w = torch.nn.Parameter(torch.ones(8, 8))
    opt = Sgd().build([w], lr=0.1)
    w.sum().backward()
    opt.step()
    assert core_describe(Sgd(), opt) == {"requested": "sgd", "ran": "sgd", "state_bytes": 8 * 8 * 4}


def test_paged_factories_page_every_cuda_tensor_but_keep_the_cpu_fallback() -> None:
    import bitsandbytes as bnb

    from plugins.paged.factories import page_every_state

    param = torch.nn.Parameter(
        torch.randn(16, 64)
    )  # 1024 elements: bitsandbytes alone pages >= 1e5
    opt = BY_NAME["paged_adamw_32bit"].build([param], lr=1e-3)
    assert isinstance(opt, bnb.optim.PagedAdamW32bit) and type(opt).__name__ == "PagedAdamW32bit"
    assert type(opt) is page_every_state(bnb.optim.PagedAdamW32bit)  # one class per optimizer
    assert type(opt).get_state_buffer is not bnb.optim.PagedAdamW32bit.get_state_buffer
    with pytest.warns(UserWarning, match="Paged optimizers are not supported on CPU"):
        state = opt.get_state_buffer(param)
    assert state.device.type == "cpu" and not getattr(state, "is_paged", False)
