"""Contract suite for :class:`hub.types.OptimizerFactory` plugins."""

from __future__ import annotations

from typing import Any

from hub.testing.contracts import ProtocolContract
from hub.types import OptimizerFactory


class OptimizerFactoryContract(ProtocolContract):
    """Subclass in your tests and provide a ``optimizer_factory`` fixture returning the object under test."""

    protocol, kind, fixture_name = OptimizerFactory, "optimizer", "optimizer_factory"

    def _problem(self) -> tuple[Any, Any]:
        import torch

        torch.manual_seed(0)
        # 4096 values: large enough for blockwise 8-bit state
        param = torch.nn.Parameter(torch.randn(64, 64))
        target = torch.randn(64, 64)
        return param, target

    def test_steps_reduce_a_quadratic_loss(self, subject: Any) -> None:
        param, target = self._problem()
        opt = subject.build([param], lr=0.05)
        # a summed loss keeps gradients O(1), so plain SGD and Adam-style methods both converge
        first = ((param - target) ** 2).sum().item()
        for _ in range(30):
            opt.zero_grad()
            loss = ((param - target) ** 2).sum()
            loss.backward()
            opt.step()
        assert ((param - target) ** 2).sum().item() < 0.5 * first

    def test_uses_the_given_learning_rate(self, subject: Any) -> None:
        param, _ = self._problem()
        opt = subject.build([param], lr=0.123, weight_decay=0.01)
        assert [g["lr"] for g in opt.param_groups] == [0.123]
        assert [g["weight_decay"] for g in opt.param_groups] == [0.01]

    def test_only_given_parameters_change(self, subject: Any) -> None:
        import torch

        param, target = self._problem()
        frozen = torch.nn.Parameter(torch.ones(64, 64))
        opt = subject.build([param], lr=0.05)
        before = param.detach().clone()
        ((param - target) ** 2 + frozen).mean().backward()
        opt.step()
        assert not torch.equal(param.detach(), before)
        assert torch.equal(frozen.detach(), torch.ones(64, 64))
