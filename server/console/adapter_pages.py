"""Adapters: the list, one adapter's versions and manifest, share, revoke, delete, verify, push.

Every action calls :class:`hub.adapters.Adapters` as the console's team, so names,
validation, policy hooks, authorization and the audit log are exactly the CLI's; a
refusal is shown as the CLI prints it (``error: ...``) and changes nothing. Share, revoke
and delete ask for confirmation on a page of their own (no script needed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
from litestar import Request, Response, get, post

from hub.errors import HubError, ValidationError
from hub.types import AdapterRef
from server.console.app import console, done, failed, page


def _rows(records: list[Any], capabilities: frozenset[str], verified: dict[str, str]) -> list:
    signed = "signed" in capabilities
    return [
        {
            "name": r.name,
            "version": r.version,
            "ref": f"{r.name}@{r.version}",
            "publisher": r.team,
            "base": r.base_fingerprint or "",
            "created": r.created,
            "size": r.size,
            "readers": list(r.shared_with),
            "signature": "manifest signature verified" if signed else "unsigned backend",
            "verified": verified.get(f"{r.name}@{r.version}", "not checked"),
        }
        for r in records
    ]


def _list(request: Request) -> list[dict[str, Any]]:
    st = console(request)
    return _rows(st.act(st.store.list), st.store.capabilities, st.verified)


@get("/adapters", sync_to_thread=True)
def adapters_list(request: Request) -> Response:
    """Every adapter version the team can read."""
    try:
        rows = _list(request)
    except HubError as exc:
        return failed(request, exc, "adapters.html", rows=[])
    return page(request, "adapters.html", rows=rows)


def _detail(request: Request, name: str, version: int | None) -> dict[str, Any]:
    """Context of the detail page: the visible versions of ``name`` and one version's manifest."""
    st = console(request)
    rows = [r for r in _list(request) if r["name"] == name]
    if not rows:
        return {"name": name, "rows": [], "shown": None, "manifest": None, "readers": {}}
    chosen = version if version in {r["version"] for r in rows} else rows[-1]["version"]
    shown = st.act(st.store.show, AdapterRef(name, chosen))
    manifest = shown.get("manifest") or {}
    return {
        "name": name,
        "rows": rows,
        "shown": chosen,
        "manifest": json.dumps(manifest, indent=2, sort_keys=True),
        "training": json.dumps(manifest.get("metadata") or {}, indent=2, sort_keys=True),
        "readers": shown.get("readers") or {},
    }


@get("/adapters/{name:str}", sync_to_thread=True)
def adapter_detail(request: Request) -> Response:
    """One adapter: its versions, a version's manifest and training metadata, the forms."""
    name = request.path_params["name"]
    raw = request.query_params.get("version") or ""
    version = int(raw) if raw.isdigit() else None
    try:
        context = _detail(request, name, version)
    except HubError as exc:
        return failed(request, exc, "adapter.html", name=name, rows=[], shown=None)
    status = 200 if context["rows"] else 404
    return page(request, "adapter.html", status, **context)


def _ref(name: str, version: str | None) -> AdapterRef:
    return AdapterRef(name, int(version)) if version and version.isdigit() else AdapterRef(name)


async def _act(request: Request, name: str, action: str) -> Any:
    """Confirm, then run one owner action (share, revoke, delete, verify) on ``name``."""
    form = await request.form()
    st = console(request)
    team = (form.get("team") or "").strip()
    ref = _ref(name, form.get("version"))
    if action != "verify" and form.get("confirm") != "yes":
        return page(request, "confirm.html", action=action, name=name, ref=ref, team=team)
    calls = {
        "share": lambda: st.store.share(ref, with_team=team),
        "revoke": lambda: st.store.revoke(ref, from_team=team),
        "delete": lambda: st.store.delete(ref),
        "verify": lambda: st.store.verify(ref),
    }
    try:
        out = await anyio.to_thread.run_sync(lambda: st.act(calls[action]))
    except HubError as exc:
        if action == "verify" and ref.version is not None:
            st.verified[str(ref)] = f"FAILED: {exc}"
        context = await anyio.to_thread.run_sync(_safe_detail, request, name, ref.version)
        return failed(request, exc, "adapter.html", **context)
    if action == "share":
        return done(
            request, f"shared {ref} with {team} (latest shared: {out})", f"/adapters/{name}"
        )
    if action == "revoke":
        message = f"revoked {team} from {name}; latest version now {out}"
        return done(request, message, f"/adapters/{name}")
    if action == "delete":
        return done(request, f"deleted {ref}", "/adapters")
    st.verified[out["ref"]] = (
        "verified: signatures, trust and file hashes"
        if out["signed"]
        else "hashes checked (unsigned backend)"
    )
    return done(request, f"ok {out['ref']} ({out['bytes']:,} bytes)", f"/adapters/{name}")


def _safe_detail(request: Request, name: str, version: int | None) -> dict[str, Any]:
    try:
        return _detail(request, name, version)
    except HubError:
        return {"name": name, "rows": [], "shown": None, "manifest": None, "readers": {}}


@post("/adapters/{name:str}/share")
async def share(request: Request) -> Response:
    """Share ``name`` (one version or all) with a team, after confirmation."""
    return await _act(request, request.path_params["name"], "share")


@post("/adapters/{name:str}/revoke")
async def revoke(request: Request) -> Response:
    """Revoke a team's access to ``name``, after confirmation."""
    return await _act(request, request.path_params["name"], "revoke")


@post("/adapters/{name:str}/delete")
async def delete(request: Request) -> Response:
    """Delete a version of ``name`` (or every version), after confirmation."""
    return await _act(request, request.path_params["name"], "delete")


@post("/adapters/{name:str}/verify")
async def verify(request: Request) -> Response:
    """Pull and check a version as ``adapters verify`` does (signatures, trust, hashes)."""
    return await _act(request, request.path_params["name"], "verify")


@get("/push", sync_to_thread=False)
def push_form(request: Request) -> Response:
    """The push form."""
    return page(request, "push.html", form={})


@post("/push")
async def push(request: Request) -> Response:
    """Validate and store a PEFT directory (or a training run) on this machine as NAME."""
    form = dict(await request.form())
    st = console(request)
    readers = [t for t in str(form.get("share_with", "")).replace(",", " ").split() if t]
    fields = {k: str(form.get(k) or "").strip() for k in ("directory", "name", "base")}

    def run() -> Any:
        if not fields["directory"]:
            raise ValidationError("no directory given: pass a PEFT adapter directory")
        return st.store.import_dir(
            Path(fields["directory"]),
            fields["name"],
            base=fields["base"] or None,
            share_with=readers,
        )

    try:
        ref = await anyio.to_thread.run_sync(lambda: st.act(run))
    except HubError as exc:
        return failed(request, exc, "push.html", form=fields | {"share_with": " ".join(readers)})
    return done(request, f"pushed {ref}", f"/adapters/{ref.name}")


HANDLERS = (adapters_list, adapter_detail, share, revoke, delete, verify, push_form, push)
