"""The ``decode`` section of ``qlora-hub bench gpu`` (run by :mod:`server.bench_gpu`).

One request alone (batch 1) on the server's engine, bare base and with an adapter, against
plain transformers + bitsandbytes ``generate`` on the same base, and against the
memory-bandwidth bound of the 4-bit weights: the bytes one decode step reads
(:func:`bytes_per_token`) over the bandwidth of a device-to-device copy measured in the
same process (:func:`bandwidth_gb_s`).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from server.bench_gpu import (
    Result,
    add_adapters,
    load,
    make_engine,
    model_device,
    prompt_ids,
    say,
    sync,
)


def bandwidth_gb_s(device: Any, nbytes: int, repeats: int = 10) -> float:
    """Device-to-device copy bandwidth (bytes read + written per second), in GB/s."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    src.fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    sync(device)
    return round(2 * nbytes * repeats / (time.perf_counter() - start) / 1e9, 1)


def bytes_per_token(model: Any) -> dict[str, int]:
    """Bytes one decode step reads from the weights: every parameter once (one row of the
    input embedding) plus each 4-bit layer's quantization state (absmax, nested absmax, code)."""
    emb = model.get_input_embeddings().weight
    seen: set[int] = set()
    params = state = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        params += p[0].nbytes if p is emb else p.numel() * p.element_size()
    for module in model.modules():
        qs = getattr(getattr(module, "weight", None), "quant_state", None)
        if qs is None or id(qs) in seen:
            continue
        seen.add(id(qs))
        parts = [qs.absmax, qs.code]
        if getattr(qs, "nested", False) and qs.state2 is not None:
            parts += [qs.state2.absmax, qs.state2.code]
        state += sum(t.numel() * t.element_size() for t in parts if t is not None)
    return {"weights": params, "quant_state": state, "total": params + state}


def engine_decode(engine: Any, tok: Any, slot: int, n: int) -> dict[str, Any]:
    """One request alone: ``n`` tokens; decode tokens/s from the first to the last token."""
    from server.engine import GenRequest

    done = threading.Event()
    req = GenRequest(
        prompt_ids=prompt_ids(tok, 0, 16),
        slot=slot,
        max_tokens=n,
        on_event=lambda ev: ev[0] != "delta" and done.set(),
        timeout_s=600,
    )
    start = time.monotonic()
    engine.submit(req)
    done.wait(600)
    end = time.monotonic()
    if len(req.generated) < 2:
        raise RuntimeError(f"the engine made {len(req.generated)} tokens")
    span = req.last_token_at - req.first_token_at
    return {
        "tokens": len(req.generated),
        "ttft_ms": round((req.first_token_at - start) * 1000, 1),
        "wall_s": round(end - start, 3),
        "decode_tokens_per_s": round((len(req.generated) - 1) / span, 1),
    }


def plain_bnb(base: str, device: Any, dtype: Any, n: int) -> dict[str, Any]:
    """transformers + bitsandbytes NF4 (double quant) ``generate`` at batch 1, greedy."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )
    model = AutoModelForCausalLM.from_pretrained(
        base, quantization_config=quant, dtype=dtype, device_map={"": str(device)}
    ).eval()
    tok = AutoTokenizer.from_pretrained(base)
    ids = torch.tensor([prompt_ids(tok, 0, 16)], device=device)

    def timed(tokens: int) -> float:
        sync(device)
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                pad_token_id=0,
            )
        sync(device)
        return time.perf_counter() - start

    timed(4)  # warm-up
    one, full = timed(1), timed(n)
    return {
        "tokens": n,
        "wall_s": round(full, 3),
        "ttft_ms": round(one * 1000, 1),
        "decode_tokens_per_s": round((n - 1) / max(full - one, 1e-9), 1),
    }


def section_decode(hub: Any, base: str, device: str, s: dict[str, Any], out: Result) -> None:
    """Batch-1 decode: engine (base and adapter) vs plain transformers+bnb vs bandwidth bound."""
    loaded = load(hub, base, device)
    dev = model_device(loaded.model)
    out.put("model_device", str(dev))
    weights = bytes_per_token(loaded.model)
    gbs = bandwidth_gb_s(dev, s["copy_mib"] << 20)
    bound = gbs * 1e9 / weights["total"]
    out.put("bytes_per_token", weights)
    out.put("copy_bandwidth_gb_s", gbs)
    out.put("bound_tokens_per_s", round(bound, 1))
    say(f"decode: copy bandwidth {gbs} GB/s, bound {bound:.0f} tokens/s")
    engine = make_engine(loaded, 1, s["rank"], 1)
    slots = add_adapters(engine, 1, s["rank"])
    engine.start()
    n = s["decode_tokens"]
    try:
        engine_decode(engine, loaded.tokenizer, 0, 4)  # warm-up
        for label, slot in (("engine_base", 0), ("engine_adapter", slots[0])):
            got = engine_decode(engine, loaded.tokenizer, slot, n)
            got["fraction_of_bound"] = round(got["decode_tokens_per_s"] / bound, 4)
            out.put(label, got)
            say(f"decode: {label} {got['decode_tokens_per_s']} tokens/s")
    finally:
        engine.stop()
    dtype = loaded.model.get_input_embeddings().weight.dtype
    del engine, loaded
    got = plain_bnb(base, dev, dtype, n)
    got["fraction_of_bound"] = round(got["decode_tokens_per_s"] / bound, 4)
    out.put("plain_transformers_bnb", got)
    say(f"decode: plain transformers+bnb {got['decode_tokens_per_s']} tokens/s")
