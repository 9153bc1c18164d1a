"""The embedded base: a small random-weight Llama built locally, plus base fingerprints.

Nothing is downloaded. The model comes from a fixed config and seed; the
tokenizer is byte-level (256 byte tokens plus a few specials), so it needs
no vocabulary file from anywhere. Every dimension is a multiple of 64, which
the bitsandbytes CPU 4-bit kernels need. The weights are random: the base is
for demos and tests, where a LoRA learns small synthetic tasks in minutes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from hub.errors import ValidationError

SEED = 1234
VOCAB_SIZE = 320  # 256 bytes + specials, padded to a multiple of 64
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

LLAMA_CONFIG: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "initializer_range": 0.02,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

# Larger random-weight shapes of the same architecture and tokenizer, for benchmarks
# (load time and memory at a realistic size); only these keys differ from LLAMA_CONFIG.
SHAPES: dict[str, dict[str, int]] = {
    "embedded": {},
    "103m": {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8,
             "num_attention_heads": 16, "num_key_value_heads": 16},
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
           "num_attention_heads": 32, "num_key_value_heads": 8},
}  # fmt: skip


def shape_config(shape: str) -> dict[str, Any]:
    """The Llama config of a :data:`SHAPES` entry.

    Raises:
        ValidationError: ``shape`` is not one of :data:`SHAPES` (the message lists them).
    """
    if shape not in SHAPES:
        raise ValidationError(f"unknown base shape {shape!r}: choose one of {', '.join(SHAPES)}")
    return {**LLAMA_CONFIG, **SHAPES[shape]}


# A minimal chat template for {"messages": [...]} data: one special token per role.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _byte_symbol(byte: int) -> str:
    """The printable character the ByteLevel pre-tokenizer uses for ``byte`` (GPT-2's table)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    if byte in printable:
        return chr(byte)
    return chr(256 + [b for b in range(256) if b not in printable].index(byte))


def _byte_level_tokenizer() -> Any:
    """A ``PreTrainedTokenizerFast`` over raw bytes: ids 0-6 specials, then 256 byte symbols."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for byte in range(256):  # token id = byte value + number of specials
        vocab[_byte_symbol(byte)] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
        model_max_length=LLAMA_CONFIG["max_position_embeddings"],
        padding_side="left",
    )
    fast.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[3:]})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_base(out: Path, *, force: bool = False, shape: str = "embedded") -> dict[str, Any]:
    """Write the embedded base to ``out`` in Hugging Face format (safetensors).

    Deterministic: the same versions of torch and transformers give the same
    bytes every time.

    Args:
        out: output directory; must be empty or absent unless ``force``.
        force: replace the contents of a non-empty ``out``.
        shape: a :data:`SHAPES` name; larger shapes are for benchmarks only.

    Returns:
        ``{"path", "parameters", "sha256"}``; ``sha256`` is :func:`fingerprint`.
    """
    out = Path(out)
    config_values = shape_config(shape)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise ValidationError(
                f"{out} is not empty: choose an empty directory or pass --force to replace it"
            )
        shutil.rmtree(out)
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**config_values)
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=1, eos_token_id=2, pad_token_id=0, do_sample=False
    )
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    _byte_level_tokenizer().save_pretrained(tmp)
    (tmp / "QLORA_HUB_BASE.md").write_text(
        f"Embedded qlora-hub base, shape {shape}: random weights (seed "
        f"{SEED}), byte-level tokenizer. For demos, tests and benchmarks only.\n"
    )
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return {
        "path": str(out),
        "parameters": sum(p.numel() for p in model.parameters()),
        "sha256": fingerprint(out),
    }


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors weight files of a Hugging Face model directory, sorted."""
    return sorted(Path(model_dir).glob("*.safetensors"))


def fingerprint(model_dir: Path, extra: dict[str, Any] | None = None) -> str:
    """sha256 over ``config.json``, every safetensors weight file, and ``extra`` (e.g. a quant spec).

    Two bases with the same fingerprint have the same architecture and weights,
    so an adapter trained on one applies to the other.
    """
    model_dir = Path(model_dir)
    config = model_dir / "config.json"
    if not config.is_file():
        raise ValidationError(
            f"{model_dir} is not a Hugging Face model directory: config.json is missing"
        )
    h = hashlib.sha256()
    for path in [config, *weight_files(model_dir)]:
        h.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    if extra:
        h.update(json.dumps(extra, sort_keys=True).encode())
    return h.hexdigest()
