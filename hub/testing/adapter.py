"""Contract suite for :class:`hub.types.AdapterMethod` plugins."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hub.errors import ValidationError
from hub.testing.contracts import ProtocolContract
from hub.types import AdapterMethod, AdapterPayload


class AdapterMethodContract(ProtocolContract):
    """Subclass in your tests and provide a ``adapter_method`` fixture returning the object under test.

    The behavioural tests run on the embedded base in bf16 (no quantizer needed).
    Override ``adapter_options`` to pass your method's options to ``attach``.
    """

    protocol, kind, fixture_name = AdapterMethod, "adapter", "adapter_method"
    adapter_options: dict[str, Any] = {}

    @pytest.fixture
    def contract_base(self, embedded_base: Path) -> Any:
        """A fresh bf16 copy of the embedded base."""
        import torch
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(embedded_base, dtype=torch.bfloat16)

    @pytest.fixture
    def trained_payload(self, subject: Any, contract_base: Any, tmp_path: Path) -> AdapterPayload:
        """An adapter with non-zero weights, saved by the method and read back as bytes."""
        import torch

        model = subject.attach(contract_base, self.adapter_options)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.05)
        subject.save(model, tmp_path / "adapter")
        return AdapterPayload.from_dir(tmp_path / "adapter", "contract")

    def test_attach_trains_only_adapter_parameters(self, subject: Any, contract_base: Any) -> None:
        total = sum(p.numel() for p in contract_base.parameters())
        model = subject.attach(contract_base, self.adapter_options)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert 0 < trainable < total

    def test_save_writes_only_peft_config_and_safetensors(
        self, subject: Any, contract_base: Any, tmp_path: Path
    ) -> None:
        subject.save(subject.attach(contract_base, self.adapter_options), tmp_path / "a")
        assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
            AdapterPayload.CONFIG,
            AdapterPayload.WEIGHTS,
        ]

    def test_load_from_bytes_restores_saved_weights(
        self, subject: Any, trained_payload: AdapterPayload, embedded_base: Path
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(embedded_base, dtype=torch.bfloat16)
        model = subject.load(base, trained_payload, "contract")
        saved = trained_payload.tensors()
        from peft.utils import get_peft_model_state_dict

        loaded = get_peft_model_state_dict(model, adapter_name="contract")
        assert sorted(loaded) == sorted(saved)
        assert all(torch.equal(loaded[k], saved[k]) for k in saved)

    def test_load_refuses_missing_tensor(
        self, subject: Any, trained_payload: AdapterPayload, contract_base: Any
    ) -> None:
        from safetensors.torch import save

        tensors = trained_payload.tensors()
        tensors.pop(sorted(tensors)[0])
        trained_payload.files[AdapterPayload.WEIGHTS] = save(tensors)
        with pytest.raises(ValidationError, match="missing"):
            subject.load(contract_base, trained_payload, "contract")
