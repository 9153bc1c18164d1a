"""The embedded base: deterministic, Hugging Face loadable, 4-bit friendly."""

import json
from pathlib import Path

import pytest

from hub.base import LLAMA_CONFIG, build_base, fingerprint, shape_config
from hub.errors import ValidationError


def test_base_init_twice_gives_byte_identical_files(tmp_path, embedded_base):
    again = tmp_path / "again"
    build_base(again)
    first = {p.name: p.read_bytes() for p in embedded_base.iterdir()}
    second = {p.name: p.read_bytes() for p in again.iterdir()}
    assert first.keys() == second.keys()
    assert first == second
    assert fingerprint(again) == fingerprint(embedded_base)


def test_base_loads_with_auto_classes_and_has_64_multiple_dimensions(embedded_base):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(embedded_base)
    linear_shapes = [m.weight.shape for m in model.modules() if type(m).__name__ == "Linear"]
    assert len(linear_shapes) == 4 * 7 + 1  # q k v o gate up down per layer, plus lm_head
    assert all(d % 64 == 0 for shape in linear_shapes for d in shape)
    n = sum(p.numel() for p in model.parameters())
    assert 3_000_000 <= n <= 10_000_000
    assert json.loads((embedded_base / "config.json").read_text())["model_type"] == "llama"


def test_tokenizer_is_byte_level_with_ids_offset_by_the_specials(embedded_base):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_base)
    text = "Héllo\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == [b + 7 for b in text.encode()]
    assert tok.decode(ids) == text
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.padding_side == "left"
    assert len(tok) <= LLAMA_CONFIG["vocab_size"]


def test_tokenizer_has_a_chat_template(embedded_base):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_base)
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == "<|user|>hi<|end|><|assistant|>"


def test_base_init_refuses_a_non_empty_directory(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValidationError) as exc:
        build_base(out)
    assert str(exc.value) == (
        f"{out} is not empty: choose an empty directory or pass --force to replace it"
    )
    assert (out / "keep.txt").read_text() == "mine"


def test_base_init_force_replaces_the_directory(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    build_base(out, force=True)
    assert not (out / "keep.txt").exists()
    assert (out / "model.safetensors").is_file()


def test_fingerprint_changes_with_the_weights(tmp_path, embedded_base):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(embedded_base, copy)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(data))
    assert fingerprint(copy) != fingerprint(embedded_base)


def test_fingerprint_of_a_non_model_directory_is_a_clear_error(tmp_path):
    with pytest.raises(
        ValidationError, match="is not a Hugging Face model directory: config.json is missing"
    ):
        fingerprint(tmp_path)


def test_base_init_command_writes_into_the_home(tmp_path, capsys):
    from hub.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--home", str(tmp_path), "base", "init"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert out.startswith(f"wrote 3,574,016 parameters to {tmp_path / 'base'} (sha256 ")
    assert (tmp_path / "base" / "model.safetensors").is_file()


@pytest.mark.parametrize(("shape", "millions"), [("103m", 103), ("1b", 974)])
def test_benchmark_shapes_have_their_named_size(shape: str, millions: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    c = shape_config(shape)
    h, i, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv = h // c["num_attention_heads"] * c["num_key_value_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h  # q o, k v, mlp, two norms
    expected = c["num_hidden_layers"] * per_layer + 2 * v * h + h  # embed, head, final norm
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**c))
    assert sum(p.numel() for p in model.parameters()) == expected
    assert expected // 10**6 == millions
    # the bitsandbytes CPU 4-bit kernels need every linear output size a multiple of 64
    assert all(m.out_features % 64 == 0 for m in model.modules() if hasattr(m, "out_features"))


def test_unknown_shape_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as err:
        build_base(tmp_path / "base", shape="7b")
    assert str(err.value) == "unknown base shape '7b': choose one of embedded, 103m, 1b"
    assert not (tmp_path / "base").exists()
