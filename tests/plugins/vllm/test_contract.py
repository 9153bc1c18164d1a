"""The engine contract of hub.testing, run against the vllm engine (a base row batched
with adapter rows, the leak vLLM's CPU LoRA ops had, is a contract case now)."""

from __future__ import annotations

import pytest

from hub.testing.engine import EngineContract


class TestVLLMEngineContract(EngineContract):
    max_lora_rank = 16  # the [vllm] max_lora_rank default

    @pytest.fixture(scope="class")
    @classmethod
    def engine(cls, vllm_engine):
        return vllm_engine
