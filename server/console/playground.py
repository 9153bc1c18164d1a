"""The playground: pick an adapter (or the bare base) and generate, with sampling settings.

Two targets:

- ``local``: the base given with ``qlora-hub ui --base`` is loaded once (quantized, as
  ``load_base`` does), and the adapter is pulled through the core (the same checks and audit
  ``pull`` entry as the CLI) and attached in memory;
- ``server``: ``POST /v1/completions`` to the ``qlora-hub serve`` URL given with ``--serve-url``,
  with the API key from ``$QLORA_HUB_API_KEY`` (never rendered).
"""

from __future__ import annotations

import math
from typing import Any

import anyio
from litestar import Request, Response, get, post

from hub.errors import ConfigError, HubError, ValidationError
from hub.types import AdapterRef
from server.console.app import console, page
from server.console.state import ConsoleState

MAX_TOKENS = 256
MAX_PROMPT = 8192


def sampling(form: Any) -> dict[str, Any]:
    """The sampling settings of the form, checked: every problem in one error."""
    problems, out = [], {}
    specs = (
        ("max_tokens", int, 1, MAX_TOKENS, 32),
        ("temperature", float, 0.0, 2.0, 0.0),
        ("top_p", float, 0.01, 1.0, 1.0),
        ("seed", int, 0, 2**31 - 1, 0),
    )
    for key, kind, low, high, default in specs:
        raw = str(form.get(key) or "").strip()
        try:
            value = kind(raw) if raw else default
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError
        except ValueError:
            problems.append(f"{key} must be a number")
            continue
        if not low <= value <= high:
            problems.append(f"{key} must be between {low} and {high}")
        out[key] = value
    prompt = str(form.get("prompt") or "")
    if not prompt or len(prompt) > MAX_PROMPT:
        problems.append(f"prompt must be 1 to {MAX_PROMPT} characters")
    if problems:
        raise ValidationError("; ".join(problems))
    return {**out, "prompt": prompt}


def _local_model(st: ConsoleState) -> dict[str, Any]:
    if st.base is None:
        raise ConfigError("no local base: start the console with --base DIR (or use a server URL)")
    if "model" not in st.models:
        from hub.models import load_base

        loaded = load_base(st.hub, st.base)
        st.models.update(model=loaded.model, tokenizer=loaded.tokenizer, names={})
    return st.models


def generate_local(st: ConsoleState, ref: AdapterRef | None, s: dict[str, Any]) -> str:
    """Generate on the local base, with ``ref`` attached (pulled through the core) or none."""
    import contextlib

    import torch

    if st.base is None:
        raise ConfigError("no local base: start the console with --base DIR (or use a server URL)")
    payload = st.act(st.store.pull, ref, where="console") if ref is not None else None
    with st.model_lock:
        m = _local_model(st)
        model, tok = m["model"], m["tokenizer"]
        key = None
        if payload is not None:
            key = m["names"].get(str(payload.ref))
            if key is None:
                key = f"console{len(m['names'])}"
                model = st.hub.adapters["lora"].load(model, payload, key)
                m["model"], m["names"][str(payload.ref)] = model, key
        if key is not None:
            model.set_adapter(key)
            ctx = contextlib.nullcontext()
        else:
            ctx = (
                model.disable_adapter()
                if hasattr(model, "disable_adapter")
                else contextlib.nullcontext()
            )
        batch = tok([s["prompt"]], return_tensors="pt")
        batch = {k: v.to(model.device) for k, v in batch.items()}
        torch.manual_seed(s["seed"])
        greedy = s["temperature"] < 1e-5
        extra = {} if greedy else {"temperature": s["temperature"], "top_p": s["top_p"]}
        with torch.no_grad(), ctx:
            out = model.generate(
                **batch,
                max_new_tokens=s["max_tokens"],
                do_sample=not greedy,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                **extra,
            )
        return tok.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def generate_remote(st: ConsoleState, ref: AdapterRef | None, s: dict[str, Any]) -> str:
    """Generate through ``qlora-hub serve`` at :attr:`ConsoleState.serve_url`."""
    import httpx

    if not st.serve_url:
        raise ConfigError("no server URL: start the console with --serve-url URL")
    if ref is None:
        raise ValidationError("pick an adapter: the server generates with an adapter")
    headers = {"Authorization": f"Bearer {st.serve_key}"} if st.serve_key else {}
    body = {
        "model": str(ref) if ref.version is not None else ref.name,
        "prompt": s["prompt"],
        "max_tokens": s["max_tokens"],
        "temperature": s["temperature"],
        "top_p": s["top_p"],
        "seed": s["seed"],
    }
    try:
        r = httpx.post(
            st.serve_url.rstrip("/") + "/v1/completions", json=body, headers=headers, timeout=120
        )
    except httpx.HTTPError as exc:
        raise ConfigError(f"server {st.serve_url} did not answer ({exc}): is it running?") from None
    if r.status_code != 200:
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = r.text[:200]
        raise ValidationError(f"server answered {r.status_code}: {message}")
    return r.json()["choices"][0]["text"]


def _choices(st: ConsoleState) -> list[str]:
    try:
        return [f"{r.name}@{r.version}" for r in st.act(st.store.list)]
    except HubError:
        return []


@get("/playground")
async def playground(request: Request) -> Response:
    """The playground form."""
    st = console(request)
    context = await anyio.to_thread.run_sync(_context, st, {})
    return page(request, "playground.html", **context)


def _context(st: ConsoleState, form: dict[str, Any]) -> dict[str, Any]:
    return {
        "adapters": _choices(st),
        "form": form,
        "has_base": st.base is not None,
        "serve_url": st.serve_url,
        "max_tokens_cap": MAX_TOKENS,
    }


@post("/playground")
async def run_playground(request: Request) -> Response:
    """Generate and show the text."""
    st = console(request)
    form = {k: str(v) for k, v in dict(await request.form()).items() if k != "csrf_token"}
    target = form.get("target") or "local"
    try:
        s = sampling(form)
        ref = AdapterRef.parse(form["adapter"]) if form.get("adapter") else None
        fn = generate_remote if target == "server" else generate_local
        text = await anyio.to_thread.run_sync(fn, st, ref, s)
    except HubError as exc:
        context = await anyio.to_thread.run_sync(_context, st, form)
        return page(request, "playground.html", 400, error=f"error: {exc}", **context)
    context = await anyio.to_thread.run_sync(_context, st, form)
    return page(request, "playground.html", output=text, **context)


HANDLERS = (playground, run_playground)
