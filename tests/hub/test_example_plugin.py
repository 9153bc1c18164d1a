"""The example third-party plugin passes the contract suite built-ins pass."""

import pytest
from qlora_hub_hello import SGDFactory

from hub.testing import OptimizerFactoryContract


class TestExampleSGD(OptimizerFactoryContract):
    @pytest.fixture
    def optimizer_factory(self):
        return SGDFactory()
