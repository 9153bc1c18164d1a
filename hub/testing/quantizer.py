"""Contract suite for :class:`hub.types.Quantizer` plugins.

Besides the registration checks, every quantizer must: load the embedded
base into a model that runs; save it as a checkpoint whose manifest names
the method, the base fingerprint and the sha256 of every file; reload that
checkpoint to the same outputs; refuse a tampered checkpoint naming the
file; refuse a non-empty output directory; and report a footprint.

Provide the ``quantizer`` fixture with ``scope="class"`` (or wider): the
suite loads and saves the model once per class.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from hub.base import fingerprint
from hub.errors import HubError, IntegrityError, ValidationError
from hub.models import CHECKPOINT_MANIFEST
from hub.testing.contracts import ProtocolContract
from hub.types import Quantizer

PROMPT_IDS = [[1, 72, 101, 108, 108, 111]]
"""A short prompt in embedded-base token ids (``<s>Hello``)."""


class QuantizerContract(ProtocolContract):
    """Subclass in your tests and provide a class-scoped ``quantizer`` fixture."""

    protocol, kind, fixture_name = Quantizer, "quantizer", "quantizer"

    @pytest.fixture(scope="class")
    @classmethod
    def contract_model(cls, request: pytest.FixtureRequest, embedded_base: Path) -> Any:
        """The embedded base loaded by the quantizer under test."""
        return request.getfixturevalue(cls.fixture_name).load(embedded_base, {})

    @pytest.fixture(scope="class")
    @classmethod
    def contract_checkpoint(
        cls,
        request: pytest.FixtureRequest,
        contract_model: Any,
        tmp_path_factory: pytest.TempPathFactory,
    ) -> Path:
        """A checkpoint written by ``save`` before the model ran (saving must not need a forward)."""
        out = tmp_path_factory.mktemp("contract") / "ckpt"
        request.getfixturevalue(cls.fixture_name).save(contract_model, out, {})
        return out

    @staticmethod
    def logits(model: Any) -> Any:
        import torch

        with torch.no_grad():
            return model(torch.tensor(PROMPT_IDS)).logits.float()

    def test_loaded_model_produces_finite_logits(
        self, contract_checkpoint: Path, contract_model: Any
    ) -> None:
        out = self.logits(contract_model)
        assert out.shape == (1, len(PROMPT_IDS[0]), contract_model.config.vocab_size)
        assert out.isfinite().all()

    def test_manifest_names_method_and_base_fingerprint(
        self, subject: Any, contract_checkpoint: Path, embedded_base: Path
    ) -> None:
        manifest = json.loads((contract_checkpoint / CHECKPOINT_MANIFEST).read_text())
        assert manifest["method"] == subject.name
        assert manifest["base_fingerprint"] == fingerprint(embedded_base)

    def test_manifest_hashes_every_file_written(self, contract_checkpoint: Path) -> None:
        manifest = json.loads((contract_checkpoint / CHECKPOINT_MANIFEST).read_text())
        on_disk = {p.name for p in contract_checkpoint.iterdir()} - {CHECKPOINT_MANIFEST}
        assert set(manifest["files"]) == on_disk
        for name, digest in manifest["files"].items():
            assert hashlib.sha256((contract_checkpoint / name).read_bytes()).hexdigest() == digest

    def test_checkpoint_is_safetensors_only(self, contract_checkpoint: Path) -> None:
        names = {p.name for p in contract_checkpoint.iterdir()}
        assert any(n.endswith(".safetensors") for n in names)
        assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]

    def test_checkpoint_reloads_to_same_logits(
        self, subject: Any, contract_checkpoint: Path, contract_model: Any
    ) -> None:
        import torch

        reloaded = subject.load_quantized(contract_checkpoint)
        torch.testing.assert_close(self.logits(reloaded), self.logits(contract_model))

    def test_tampered_checkpoint_is_refused_naming_the_file(
        self, subject: Any, contract_checkpoint: Path, tmp_path: Path
    ) -> None:
        import shutil

        copy = tmp_path / "tampered"
        shutil.copytree(contract_checkpoint, copy)
        with (copy / "config.json").open("a") as f:
            f.write(" ")
        with pytest.raises(IntegrityError, match=r"config\.json"):
            subject.load_quantized(copy)

    def test_save_refuses_non_empty_directory(
        self, subject: Any, contract_model: Any, tmp_path: Path
    ) -> None:
        (tmp_path / "keep.txt").write_text("mine")
        with pytest.raises(ValidationError, match="not empty"):
            subject.save(contract_model, tmp_path, {})
        assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]

    def test_load_refuses_a_directory_that_is_not_a_model(
        self, subject: Any, tmp_path: Path
    ) -> None:
        with pytest.raises(HubError, match="not a model"):
            subject.load(tmp_path, {})

    def test_footprint_reports_bytes_and_bits_per_param(
        self, subject: Any, contract_model: Any
    ) -> None:
        fp = subject.footprint(contract_model)
        assert fp["bytes"] > 0
        assert 1.0 < fp["bits_per_param"] <= 32.0
