"""Pre-quantized checkpoints: contents, manifest, verification, load_base on both forms."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from hub.base import fingerprint
from hub.errors import IntegrityError, ValidationError
from hub.models import CHECKPOINT_MANIFEST, load_base


def _manifest(path):
    return json.loads((path / CHECKPOINT_MANIFEST).read_text())


def _logits(model):
    import torch

    with torch.no_grad():
        return model(torch.tensor([[1, 72, 101, 108, 108, 111]])).logits


@pytest.fixture
def nf4_hub(hub_factory):
    import plugins.nf4

    return hub_factory(plugins.nf4)


@pytest.fixture
def checkpoint_copy(nf4_checkpoint, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(nf4_checkpoint, out)
    return out


def test_checkpoint_holds_weights_config_tokenizer_and_manifest(nf4_checkpoint):
    assert sorted(p.name for p in nf4_checkpoint.iterdir()) == [
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        CHECKPOINT_MANIFEST,
        "tokenizer.json",
        "tokenizer_config.json",
    ]


def test_manifest_records_method_options_fingerprint_and_versions(nf4_checkpoint, embedded_base):
    manifest = _manifest(nf4_checkpoint)
    assert manifest["method"] == "nf4"
    assert manifest["options"] == {
        "double_quant": True,
        "compute_dtype": "bfloat16",
        "quant_storage": "uint8",
        "skip_modules": [],
        "allow_pickle": False,
    }
    assert manifest["base_fingerprint"] == fingerprint(embedded_base)
    assert set(manifest["versions"]) >= {"torch", "transformers", "bitsandbytes"}


def test_manifest_sha256_matches_every_file(nf4_checkpoint):
    files = _manifest(nf4_checkpoint)["files"]
    for name, digest in files.items():
        assert hashlib.sha256((nf4_checkpoint / name).read_bytes()).hexdigest() == digest


def test_config_carries_the_bitsandbytes_quantization_config(nf4_checkpoint):
    qc = json.loads((nf4_checkpoint / "config.json").read_text())["quantization_config"]
    assert qc["bnb_4bit_quant_type"] == "nf4"
    assert qc["bnb_4bit_use_double_quant"] is True
    assert qc["llm_int8_skip_modules"] == ["lm_head"]


def test_load_quantized_gives_identical_logits(quantizers, nf4_checkpoint, embedded_base):
    import torch

    fresh = quantizers["nf4"].load(embedded_base)
    reloaded = quantizers["nf4"].load_quantized(nf4_checkpoint)
    assert torch.equal(_logits(reloaded), _logits(fresh))


def test_load_quantized_reads_packed_4bit_weights(quantizers, nf4_checkpoint):
    import bitsandbytes as bnb
    import torch

    model = quantizers["nf4"].load_quantized(nf4_checkpoint)
    layer = model.get_submodule("model.layers.0.self_attn.q_proj")
    assert isinstance(layer, bnb.nn.Linear4bit)
    assert layer.weight.dtype == torch.uint8 and layer.weight.shape == (256 * 256 // 2, 1)


def test_modified_weight_file_is_refused_naming_it(quantizers, checkpoint_copy):
    data = bytearray((checkpoint_copy / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (checkpoint_copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(
        IntegrityError, match=r"model\.safetensors does not match its manifest hash"
    ):
        quantizers["nf4"].load_quantized(checkpoint_copy)


def test_missing_file_is_refused_naming_it(quantizers, checkpoint_copy):
    (checkpoint_copy / "tokenizer.json").unlink()
    with pytest.raises(IntegrityError, match=r"tokenizer\.json is missing"):
        quantizers["nf4"].load_quantized(checkpoint_copy)


def test_unlisted_weight_file_is_refused(quantizers, checkpoint_copy):
    shutil.copyfile(checkpoint_copy / "model.safetensors", checkpoint_copy / "extra.safetensors")
    with pytest.raises(IntegrityError, match=r"extra\.safetensors is not in the manifest"):
        quantizers["nf4"].load_quantized(checkpoint_copy)


def test_malformed_manifest_is_refused(quantizers, checkpoint_copy):
    (checkpoint_copy / CHECKPOINT_MANIFEST).write_text("{not json")
    with pytest.raises(IntegrityError, match="not valid JSON"):
        quantizers["nf4"].load_quantized(checkpoint_copy)


def test_checkpoint_of_another_method_is_refused(quantizers, nf4_checkpoint):
    with pytest.raises(ValidationError, match="was quantized with 'nf4', not 'fp4'"):
        quantizers["fp4"].load_quantized(nf4_checkpoint)


def test_save_after_a_cpu_forward_pass_is_refused(quantizers, embedded_base, tmp_path):
    from plugins.nf4.quantizers import _packed_for_cpu

    model = quantizers["nf4"].load(embedded_base)
    _logits(model)
    if not _packed_for_cpu(model):
        # bitsandbytes repacks 4-bit weights for its AVX-512 CPU kernels only; on an
        # AVX2-only CPU the forward pass leaves them as they were, so nothing to refuse.
        pytest.skip("this CPU's bitsandbytes path does not repack 4-bit weights")
    with pytest.raises(ValidationError, match="already ran a CPU forward pass"):
        quantizers["nf4"].save(model, tmp_path / "out", {})
    assert not (tmp_path / "out").exists()


def test_save_leaves_no_partial_directory(quantizers, nf4_model, tmp_path):
    quantizers["nf4"].save(nf4_model, tmp_path / "out", {})
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_load_base_loads_a_checkpoint_with_the_source_fingerprint(
    nf4_hub, nf4_checkpoint, embedded_base
):
    base = load_base(nf4_hub, nf4_checkpoint)
    assert base.method == "nf4"
    assert base.fingerprint == fingerprint(embedded_base)
    assert base.tokenizer("hi")["input_ids"] == [ord("h") + 7, ord("i") + 7]


def test_load_base_quantizes_a_model_directory_on_load(nf4_hub, embedded_base):
    import bitsandbytes as bnb

    base = load_base(nf4_hub, embedded_base)
    assert base.fingerprint == fingerprint(embedded_base)
    assert isinstance(base.model.get_submodule("model.layers.0.mlp.up_proj"), bnb.nn.Linear4bit)


def test_load_base_gives_the_same_logits_for_both_forms(nf4_hub, nf4_checkpoint, embedded_base):
    import torch

    a = load_base(nf4_hub, nf4_checkpoint).model
    # the checkpoint fixture computes in bf16; quantize-on-load is asked for the same
    b = load_base(nf4_hub, embedded_base, options={"compute_dtype": "bfloat16"}).model
    assert torch.equal(_logits(a), _logits(b))


def test_load_base_computes_in_float32_on_a_cpu_without_native_bf16(nf4_hub, embedded_base):
    from hub.models import default_compute_dtype

    layer = load_base(nf4_hub, embedded_base).model.get_submodule("model.layers.0.mlp.up_proj")
    flags = Path("/proc/cpuinfo").read_text()
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    assert default_compute_dtype() == ("bfloat16" if native else "float32")
    assert str(layer.compute_dtype) == f"torch.{default_compute_dtype()}"
