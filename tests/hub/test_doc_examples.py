"""The minimal examples in docs/writing-plugins.md are real: each passes its contract suite,
imports nothing from plugins.*, and is shown in the guide exactly as it is on disk."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hub.testing import AdapterMethodContract, AggregatorContract, QuantizerContract

# the contract suites' fixtures use only current pytest APIs
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestDeprecationWarning")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
sys.path.insert(0, str(EXAMPLES / "qlora-hub-minimal"))
from qlora_hub_minimal.adapter import TinyLora  # noqa: E402
from qlora_hub_minimal.aggregator import make_aggregator  # noqa: E402
from qlora_hub_minimal.quantizer import Bf16Quantizer  # noqa: E402


class TestMinimalQuantizer(QuantizerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def quantizer(cls):
        return Bf16Quantizer()


class TestMinimalAdapterMethod(AdapterMethodContract):
    @pytest.fixture
    def adapter_method(self):
        return TinyLora()


class TestMinimalAggregator(AggregatorContract):
    @pytest.fixture
    def aggregator(self):
        return make_aggregator()


@pytest.mark.parametrize(
    "path",
    sorted((EXAMPLES / "qlora-hub-minimal" / "qlora_hub_minimal").glob("*.py"))
    + [EXAMPLES / "qlora-hub-dirstore" / "qlora_hub_dirstore" / "__init__.py"],
    ids=lambda p: p.name if p.name != "__init__.py" else p.parent.name,
)
def test_example_file_is_shown_verbatim_in_the_guide(path):
    guide = (ROOT / "docs" / "writing-plugins.md").read_text()
    assert path.read_text().strip() in guide
