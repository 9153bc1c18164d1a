"""Federated rounds: each round directory's signed manifest, who contributed, and whether the
aggregate exists (read only; nothing here decrypts or writes).

The manifest is opened with :func:`hub.fed.round.open_round` and the key holder's signature
checked against this home's trust store, as every ``fed`` role does.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from litestar import Request, Response, get

from hub.errors import HubError
from hub.types import AdapterRef
from server.console.app import console, page

MAX_SHOWN = 200  # newest adapter versions whose manifests are read for round results


def round_dirs(rounds_dir: Path | None) -> list[Path]:
    """Subdirectories of ``rounds_dir`` holding a ``round.json`` (sorted; symlinks skipped)."""
    if rounds_dir is None or not rounds_dir.is_dir():
        return []
    return sorted(
        p
        for p in rounds_dir.iterdir()
        if p.is_dir() and not p.is_symlink() and (p / "round.json").is_file()
    )


def _stamp(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds")


def read_round(directory: Path, home: Path | None) -> dict[str, Any]:
    """What the page shows of one round: manifest fields, signature, contributions, state."""
    from hub.fed.round import AGGREGATE, open_round
    from hub.fed.signing import trust_store_verifier

    out: dict[str, Any] = {"dir": directory.name}
    try:
        verify = trust_store_verifier(home) if home is not None else None
        rnd = open_round(directory, verify=verify)
    except HubError as exc:
        return {**out, "ok": False, "problem": f"error: {exc}", "state": "refused"}
    contributed = [
        {"team": t, "bytes": p.stat().st_size, "time": _stamp(p)}
        for t in rnd.teams
        if (p := rnd.contribution_path(t)).is_file() and not p.is_symlink()
    ]
    aggregate = directory / AGGREGATE
    done = {c["team"] for c in contributed}
    if aggregate.is_file():
        state = "aggregated: the key holder can finalize"
    elif len(done) == len(rnd.teams):
        state = "every team contributed: ready to aggregate"
    else:
        state = f"collecting: {len(done)} of {len(rnd.teams)} contributions"
    return {
        **out,
        "ok": True,
        "signature": "signed by the key holder, verified" if home else "signed (not verified)",
        "id": rnd.id,
        "mode": rnd.mode,
        "aggregator": rnd.meta.get("aggregator"),
        "key_holder": rnd.key_holder,
        "created": rnd.meta.get("created"),
        "start": (rnd.start or {}).get("ref"),
        "teams": rnd.teams,
        "contributed": contributed,
        "missing": [t for t in rnd.teams if t not in done],
        "aggregate": {"bytes": aggregate.stat().st_size, "time": _stamp(aggregate)}
        if aggregate.is_file()
        else None,
        "state": state,
    }


def published(st: Any, limit: int = MAX_SHOWN) -> dict[str, list[dict[str, Any]]]:
    """Merged adapters the team can read, by round id (from their signed ``fed`` metadata)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in st.act(st.store.list)[-limit:]:
        try:
            manifest = st.act(st.store.show, AdapterRef(r.name, r.version)).get("manifest") or {}
        except HubError:
            continue
        fed = (manifest.get("metadata") or {}).get("fed")
        if isinstance(fed, dict) and isinstance(fed.get("round"), str):
            shares = fed.get("shares") if isinstance(fed.get("shares"), dict) else {}
            out.setdefault(fed["round"], []).append(
                {
                    "ref": f"{r.name}@{r.version}",
                    "name": r.name,
                    "version": r.version,
                    "combine": fed.get("combine"),
                    "shares": {str(k): v for k, v in shares.items()},
                }
            )
    return out


@get("/rounds", sync_to_thread=True)
def rounds(request: Request) -> Response:
    """Every round in the rounds directory, with the merged adapters published from it."""
    st = console(request)
    rows = [read_round(d, st.home) for d in round_dirs(st.rounds_dir)]
    results = published(st) if rows else {}
    for row in rows:
        row["published"] = results.get(row.get("id") or "", [])
    return page(request, "rounds.html", rounds=rows, rounds_dir=str(st.rounds_dir or ""))


HANDLERS = (rounds,)
