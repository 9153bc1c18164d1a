"""The engine contract of hub.testing, run against the vllm engine, and what the vllm
engine must do beyond it."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.testing.engine import WAIT_S, EngineContract


class TestVLLMEngineContract(EngineContract):
    max_lora_rank = 16  # the [vllm] max_lora_rank default

    @pytest.fixture(scope="class")
    @classmethod
    def engine(cls, vllm_engine):
        return vllm_engine

    def test_a_base_row_batched_with_adapter_rows_decodes_as_the_base_alone(
        self, engine, engine_base: Path
    ) -> None:
        """vLLM's CPU LoRA ops give a row without a LoRA the last slot's adapter; base
        requests run through an all-zero LoRA so that no team's adapter reaches them."""
        alone, alone_out = self.request(engine, 0, max_tokens=8)
        engine.submit(alone)
        assert alone_out.done.wait(WAIT_S), "the request never ended"
        handles = [self.add(engine, engine_base, f"mixed-{i}", seed=60 + i) for i in range(4)]
        try:
            rows = [self.request(engine, h, max_tokens=8) for h in handles * 2]
            for req, _ in rows[:4]:
                engine.submit(req)
            base, base_out = self.request(engine, 0, max_tokens=8)
            engine.submit(base)
            for req, _ in rows[4:]:
                engine.submit(req)
            for _, out in [*rows, (base, base_out)]:
                assert out.done.wait(WAIT_S), "a request never ended"
        finally:
            for handle in handles:
                engine.remove_adapter(handle)
        with_adapters = {tuple(req.generated) for req, _ in rows}
        assert len(with_adapters) == 4  # the adapters were applied, each its own
        assert base.generated == alone.generated
        assert tuple(base.generated) not in with_adapters
