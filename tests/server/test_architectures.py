"""Every common causal-LM architecture, end to end: tiny random models built here.

Each architecture is a tiny random model (hidden 64, two layers, every width a
multiple of 64 for the bitsandbytes CPU kernels) with the embedded base's
byte-level tokenizer, built from transformers' own config classes; nothing is
downloaded. Here: the quantizer on Falcon, a refused adapter as operators and
admins see it, and the slow matrix (quantize, train, serve, export, merge on
all ten). The bank against PEFT is in test_lora_architectures.py, merges in
tests/plugins/trainer/test_merge_architectures.py; both use the helpers here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hub.types import AdapterPayload

_ATTN = {"num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 128}
_LLAMA = {**_ATTN, "hidden_size": 64, "intermediate_size": 128, "num_key_value_heads": 1}
ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", _LLAMA),
    "mistral": ("MistralConfig", _LLAMA),
    "qwen2": ("Qwen2Config", _LLAMA),
    "gemma2": ("Gemma2Config", {**_LLAMA, "head_dim": 32}),
    "phi3": ("Phi3Config", {**_LLAMA, "num_key_value_heads": 2}),
    "gpt2": ("GPT2Config", {"n_embd": 64, "n_layer": 2, "n_head": 2, "n_positions": 128}),
    "gpt_neox": ("GPTNeoXConfig", {**_ATTN, "hidden_size": 64, "intermediate_size": 128}),
    "opt": ("OPTConfig", {**_ATTN, "hidden_size": 64, "ffn_dim": 128, "word_embed_proj_dim": 64}),
    "bloom": ("BloomConfig", {"hidden_size": 64, "n_layer": 2, "n_head": 2}),
    "falcon": ("FalconConfig", {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}),
}  # fmt: skip
"""Architecture -> (transformers config class, its tiny sizes)."""

PROMPTS = ("hello:", "apple:")


def build_tiny(kind: str, out: Path, tokenizer_from: Path) -> Path:
    """Save a tiny random ``kind`` model (bf16 safetensors) with the byte-level tokenizer."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cls, sizes = ARCHITECTURES[kind]
    config = getattr(transformers, cls)(
        vocab_size=320, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False, **sizes,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).to(torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(out)
    return out


def tiny_models(root: Path, tokenizer_from: Path):
    """``get(kind)``: the directory of a tiny random model of that architecture (built once)."""
    built: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in built:
            built[kind] = build_tiny(kind, root / kind, tokenizer_from)
        return built[kind]

    return get


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, embedded_base: Path):
    """``tiny(kind)``: the directory of a tiny random model of that architecture (built once)."""
    return tiny_models(tmp_path_factory.mktemp("tiny"), embedded_base)


@pytest.fixture(scope="module")
def hub():
    from hub.plugins import Hub

    return Hub()


def torch_max(t: Any) -> float:
    """``max |t|`` as a float."""
    return t.abs().max().item()


def lora_payload(model: Any, name: str, *, seed: int, r: int = 4, **config: Any) -> AdapterPayload:
    """A PEFT LoRA on every linear layer of ``model`` with seeded random non-zero ``B``.

    ``model`` is consumed (PEFT injects its layers into it).
    """
    return lora_pair(model, name, seed=seed, r=r, **config)[0]


def lora_pair(model: Any, name: str, *, seed: int, r: int = 4, **config: Any) -> tuple[Any, Any]:
    """:func:`lora_payload` and the ``PeftModel`` (in eval mode) it was saved from."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save

    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", lora_dropout=0.0, **config)
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():
        for pname, param in peft_model.named_parameters():
            if "lora_B" in pname:
                param.normal_(0.0, 0.3)
    state = {k: v.contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}
    raw = peft_model.peft_config["default"].to_dict()
    raw = {k: (sorted(v) if isinstance(v, set) else v) for k, v in raw.items()}
    files = {
        AdapterPayload.CONFIG: json.dumps(raw, default=str).encode(),
        AdapterPayload.WEIGHTS: save(state),
    }
    return AdapterPayload(name=name, files=files), peft_model.eval()


def test_the_quantizer_counts_nn_linear_subclasses(hub, tiny, tmp_path) -> None:
    """Falcon's ``FalconLinear`` layers are quantized (and reload so) instead of refused."""
    import torch

    quantizer = hub.quantizers["nf4"]
    model = quantizer.load(tiny("falcon"))
    kinds = {type(m).__name__ for n, m in model.named_modules() if ".h." in n and "dense" in n}
    assert kinds == {"Linear4bit"}
    assert len(model.qlora_hub_quant["quantized_modules"]) == 8
    assert model.qlora_hub_quant["linear_classes"] == ["FalconLinear"]
    ids = torch.tensor([[40, 41, 42]])
    quantizer.save(model, tmp_path / "ckpt")
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        again = quantizer.load_quantized(tmp_path / "ckpt")
        kinds = {type(m).__name__ for n, m in again.named_modules() if n.endswith("dense")}
        assert kinds == {"Linear4bit"}
        assert torch.equal(again(input_ids=ids).logits, expected)
    # the mapping that builds FalconLinear as nn.Linear is gone after loading
    from transformers.monkey_patching import get_patch_mapping

    assert "FalconLinear" not in get_patch_mapping()
    plain = hub.quantizers["none"].load(tiny("falcon"))
    assert type(plain.transformer.h[0].mlp.dense_h_to_4h).__name__ == "FalconLinear"


# ---- the matrix: quantize, train, serve, export, merge on every architecture -----------------


def _served(hub, home: Path, checkpoint: Path, payloads: list[AdapterPayload]):
    """A live server over ``checkpoint`` with ``payloads`` shared to it; ``(LiveServer, client)``."""
    from openai import OpenAI

    from hub.config import load_settings
    from hub.store import open_store
    from server.app import build_state, create_app
    from server.auth import KeyStore
    from server.model import load_served_base
    from tests.server.conftest import LiveServer, start_uvicorn

    settings = load_settings(home)
    settings.override("hub.storage", "local")
    store = open_store(hub, settings)
    for payload in payloads:
        store.push(payload, team="alpha", share_with=["server"])
    keys = {
        "alpha": KeyStore(home).create("alpha")[1],
        "admin": KeyStore(home).create("ops", admin=True)[1],
    }
    state = build_state(hub, settings, load_served_base(hub, checkpoint), store, identity="server")
    server, thread, url = start_uvicorn(create_app(state, hub))
    live = LiveServer(url, keys, state, store, home, hub, server, thread)
    return live, OpenAI(base_url=url + "/v1", api_key=keys["alpha"], max_retries=0)


def _complete_all(client, jobs: list[tuple[str, str]]) -> list[str]:
    """Greedy completions of ``(model, prompt)`` jobs, all in flight at once."""
    import concurrent.futures as cf

    def one(job: tuple[str, str]) -> str:
        out = client.completions.create(model=job[0], prompt=job[1], max_tokens=6, temperature=0)
        return out.choices[0].text

    with cf.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(one, jobs))


def _one_batch(live, client, jobs: list[tuple[str, str]]) -> list[str]:
    """Run ``jobs`` so that they share forward passes; asserts that some pass held 3+ rows.

    The engine is held (the bank's lock) while the requests arrive: until every one is
    waiting or in the prefill the engine is blocked in (at most 60 s). The engine may take
    several into that prefill, so counting the waiting ones alone could wait the whole time.
    """
    import concurrent.futures as cf
    import time

    engine = live.state.engine
    steps = "qlora_hub_batch_rows_count"
    small = 'qlora_hub_batch_rows_bucket{le="2.0"}'
    before = live.metric(steps) - live.metric(small)

    def arrived() -> int:
        prefill = engine.prefill
        return engine.queue_depth + (len(prefill.reqs) if prefill else 0)

    with cf.ThreadPoolExecutor(max_workers=1) as pool:
        with engine.bank.lock:  # the engine cannot run a forward pass meanwhile
            future = pool.submit(_complete_all, client, jobs)
            deadline = time.monotonic() + 60
            while arrived() < len(jobs) and time.monotonic() < deadline:
                time.sleep(0.01)
        texts = future.result(timeout=120)
    assert live.metric(steps) - live.metric(small) > before  # a pass ran 3+ rows
    return texts


def test_a_refused_adapter_is_logged_with_its_reason_and_shown_to_admins(
    hub, tiny, tmp_path, caplog
) -> None:
    """Clients get the usual 404; the log and the admin's load name the adapter and the reason."""
    import logging

    import httpx

    base = tiny("llama")
    dora = lora_payload(hub.quantizers["nf4"].load(base), "dora", seed=8, use_dora=True)
    live, client = _served(hub, tmp_path / "home", base, [dora])
    # Litestar's logging config replaced the root handlers, caplog's among them
    cache_log = logging.getLogger("qlora_hub.server.cache")
    cache_log.addHandler(caplog.handler)
    try:
        answer = live.complete("dora", "hello:", max_tokens=2)
        admin = httpx.post(live.url + "/v1/adapters/dora/load", headers=live.headers("admin"))
    finally:
        cache_log.removeHandler(caplog.handler)
        live.uvicorn.should_exit = True
        live.thread.join(timeout=30)
    why = (
        "adapter dora@1: use_dora is not servable: DoRA rescales every output column by a norm "
        "of W + BA, which the gathered path does not compute; merge it (qlora-hub merge) or "
        "serve it with PEFT"
    )
    assert answer.status_code == 404
    assert why not in answer.text
    assert f"adapter dora@1 refused: {why}" in [r.getMessage() for r in caplog.records]
    assert admin.status_code == 422
    assert admin.json()["error"]["message"] == f"adapter dora@1 refused: {why}"


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(ARCHITECTURES))
def test_every_architecture_end_to_end(hub, tiny, tmp_path, kind: str) -> None:
    """quantize -> train -> serve (openai client, mixed batch) -> export to plain PEFT -> merge."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from hub.types import AdapterRef
    from plugins.trainer.merge import merge_adapter
    from plugins.trainer.synth import synthesize
    from plugins.trainer.train import train_adapter
    from server.random_adapter import random_lora_payload

    quantizer = hub.quantizers["nf4"]
    checkpoint = tmp_path / "ckpt"
    quantizer.save(quantizer.load(tiny(kind)), checkpoint)
    data = synthesize("upper", 32, tmp_path / "data", held_out=0)
    run = train_adapter(
        hub, checkpoint, data["train"], tmp_path / "run", name="a", log=None,
        max_steps=3, batch_size=4, max_length=16, learning_rate=0.05, r=8, alpha=16,
        dropout=0.0, optimizer="adamw", eval_fraction=0.0, progress=False,
    )  # fmt: skip
    trained = AdapterPayload.from_dir(run.adapter_dir, "a")
    other = random_lora_payload(tiny(kind), "b", seed=9, r=4, std=0.3, targets="all-linear")

    live, client = _served(hub, tmp_path / "home", checkpoint, [trained, other])
    try:
        jobs = [(m, p) for p in PROMPTS for m in ("a", "b", "base")]
        alone = [_complete_all(client, [job])[0] for job in jobs]
        mixed = _one_batch(live, client, jobs)
    finally:
        live.uvicorn.should_exit = True
        live.thread.join(timeout=30)
    assert mixed == alone
    by_model = {m: [t for (jm, _), t in zip(jobs, alone, strict=True) if jm == m] for m in "ab"}
    base_texts = [t for (jm, _), t in zip(jobs, alone, strict=True) if jm == "base"]
    assert by_model["a"] != base_texts and by_model["b"] != base_texts  # both adapters matter

    exported = tmp_path / "exported"
    live.store.export(AdapterRef("a", 1), exported, team="alpha")
    ids = torch.tensor([[40, 41, 42, 43]])
    with torch.no_grad():
        plain = PeftModel.from_pretrained(quantizer.load_quantized(checkpoint), exported)
        ours = hub.adapters["lora"].load(quantizer.load_quantized(checkpoint), trained, "a")
        assert torch.equal(plain(input_ids=ids).logits, ours(input_ids=ids).logits)
        with ours.disable_adapter():
            assert torch_max(ours(input_ids=ids).logits - plain(input_ids=ids).logits) > 0.01

    report = merge_adapter(hub, str(checkpoint), trained, tmp_path / "merged")
    assert report["max_abs_diff"] < 0.1 * report["logit_scale"]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert type(merged).__name__ == type(ours.base_model.model).__name__
