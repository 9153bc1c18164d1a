"""Every built-in quantizer passes the shared Quantizer contract suite."""

from __future__ import annotations

import pytest

from hub.testing import QuantizerContract
from plugins.nf4.quantizers import builtin_quantizers

BY_NAME = {q.name: q for q in builtin_quantizers()}


class TestNf4Contract(QuantizerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def quantizer(cls):
        return BY_NAME["nf4"]


class TestFp4Contract(QuantizerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def quantizer(cls):
        return BY_NAME["fp4"]


class TestInt8Contract(QuantizerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def quantizer(cls):
        return BY_NAME["int8"]


class TestNoneContract(QuantizerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def quantizer(cls):
        return BY_NAME["none"]
