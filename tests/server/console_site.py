"""The web console's browser-test site: two teams' consoles over one vault, runs, rounds,
adapter directories, and the page helpers the browser tests share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # containers often have a 64 MB /dev/shm
]
VIEWPORT = {"width": 1100, "height": 720}


def write_dir(path: Path, files: dict[str, bytes]) -> Path:
    """A new directory ``path`` holding ``files`` (name -> bytes)."""
    path.mkdir(parents=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path


def write_run(path: Path, lr: float, losses: list[float]) -> None:
    """A run directory as ``qlora-hub train`` writes it (run.json, metrics.jsonl, manifest.json)."""
    path.mkdir(parents=True)
    options = {"r": 8, "alpha": 16, "learning_rate": lr, "batch_size": 16, "max_steps": 40}
    (path / "run.json").write_text(json.dumps({"name": path.name, "options": options}))
    lines = [
        {"kind": "step", "step": 5 * (i + 1), "epoch": 0.1 * i, "loss": loss, "learning_rate": lr}
        for i, loss in enumerate(losses)
    ]
    lines.append({"kind": "eval", "step": 5 * len(losses), "eval_loss": losses[-1] * 1.1})
    (path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    manifest = {"name": path.name, "config": options, "metrics": {"eval_loss": losses[-1] * 1.1}}
    (path / "manifest.json").write_text(json.dumps(manifest))


def write_rounds(hub: Any, home: Path, settings: Any, rounds: Path, keys: Path) -> None:
    """Round r1 run to the end by alpha and beta (plain aggregator), merged adapter published;
    round r2 with alpha's contribution only."""
    from hub.fed.signing import team_signer, trust_store_verifier
    from hub.store import open_store
    from hub.testing.aggregator import contract_adapter

    agg, verify = hub.aggregators["plain"], trust_store_verifier(home)
    sign = {t: team_signer(home, t) for t in ("alpha", "beta")}
    for rid, teams_in in (("r1", ("alpha", "beta")), ("r2", ("alpha",))):
        agg.init_round(
            rounds / rid, round_id=rid, teams=["alpha", "beta"], mode="ffa",
            key_dir=keys / rid, key_holder="alpha", sign=sign["alpha"],
        )  # fmt: skip
        for i, team in enumerate(teams_in):
            agg.contribute(
                rounds / rid, team=team, adapter=contract_adapter(i + 1), weight=1.0 + 2 * i,
                sign=sign[team], verify=verify,
            )  # fmt: skip
    agg.aggregate(rounds / "r1", verify=verify)
    merged = agg.finalize(rounds / "r1", key_dir=keys / "r1", name="merged-r1", verify=verify)
    store = open_store(hub, settings, team="alpha")
    store.push(merged, metadata={"fed": merged.manifest["fed"]}, share_with=["beta"])


def build_site(root: Path, embedded_base: Path) -> dict[str, Any]:
    """Consoles for alpha and beta over one vault (each on its own loopback port), two
    training runs, two federated rounds, and adapter directories (a good one, a pickled one)."""
    from hub import teams
    from hub.config import load_settings
    from hub.plugins import Hub
    from hub.store import open_store
    from server.console.app import create_console_app
    from server.console.security import allowed_hosts
    from server.console.state import ConsoleState
    from server.random_adapter import random_lora_payload
    from tests.server.conftest import start_uvicorn

    home = root / "home"
    home.mkdir()
    for team in ("alpha", "beta"):
        teams.create_team(home, team, passphrase=None)
    (home / "qlora-hub.toml").write_text('[hub]\nstorage = "vault"\n')
    hub = Hub()
    settings = load_settings(home)
    runs = root / "runs"
    write_run(runs / "lr-2e-3", 2e-3, [4.0, 3.1, 2.2, 1.5, 1.1, 0.8, 0.6, 0.5])
    write_run(runs / "lr-8e-3", 8e-3, [4.0, 2.5, 1.2, 0.7, 0.4, 0.3, 0.25, 0.2])
    rounds = root / "rounds"
    write_rounds(hub, home, settings, rounds, root / "fed-keys")
    good = random_lora_payload(embedded_base, "greeter", seed=11, r=8)
    dirs = {"good": write_dir(root / "good", good.files)}
    dirs["pickle"] = write_dir(root / "pickled", {**good.files, "adapter_model.bin": b"\x80\x04."})
    consoles = {}
    for team in ("alpha", "beta"):
        store = open_store(hub, settings, team=team)
        st = ConsoleState(
            hub=hub,
            store=store,
            team=team,
            home=home,
            runs_dir=runs,
            rounds_dir=rounds,
            base=embedded_base,
        )
        server, thread, url = start_uvicorn(create_console_app(st))
        st.allowed_hosts = allowed_hosts("127.0.0.1", int(url.rsplit(":", 1)[1]))
        consoles[team] = {"state": st, "url": url, "server": server, "thread": thread}
    return {
        "home": home,
        "hub": hub,
        "settings": settings,
        "dirs": dirs,
        "consoles": consoles,
        "base": embedded_base,
        "good": good,
    }


def stop_site(site: dict[str, Any]) -> None:
    """Stop both consoles."""
    consoles = site["consoles"]
    for c in consoles.values():
        c["server"].should_exit = True
        c["thread"].join(timeout=30)


def shot(page: Any, shots: Path, name: str) -> None:
    """A screenshot of the viewport as docs/images/console-NAME.png, in 64 colours (small)."""
    from PIL import Image

    path = shots / f"console-{name}.png"
    page.screenshot(path=str(path))
    Image.open(path).convert("RGB").quantize(colors=64).save(path, optimize=True)


def login(browser: Any, site: dict, team: str) -> Any:
    """A new browser context logged in as ``team``'s console; its page is on /adapters."""
    c = site["consoles"][team]
    page = browser.new_context(viewport=VIEWPORT).new_page()
    response = page.goto(f"{c['url']}/login?token={c['state'].sessions.token}")
    assert response.status == 200 and page.url == f"{c['url']}/adapters"
    return page


def refs_visible(site: dict, team: str) -> list[str]:
    """What the core says ``team`` can read, asked outside the browser."""
    from hub.store import open_store

    store = open_store(site["hub"], site["settings"], team=team)
    return [f"{r.name}@{r.version}" for r in store.list()]


def audit_entries(site: dict) -> list[dict]:
    """The vault's audit log entries (read through the backend's public ``audit``)."""
    return site["consoles"]["alpha"]["state"].store.backend.audit.entries()


def push(page: Any, site: dict, directory: Path, name: str, base: Path | None = None) -> None:
    """Fill and send alpha's push form."""
    page.goto(site["consoles"]["alpha"]["url"] + "/push")
    page.fill("#directory", str(directory))
    page.fill("#name", name)
    if base is not None:
        page.fill("#base", str(base))
    page.click("#push-form button[type=submit]")


def confirm(page: Any, form: str, **fields: str) -> None:
    """Fill ``form``'s ``fields``, send it, and confirm on the confirmation page."""
    for field, value in fields.items():
        page.fill(f"{form} [name={field}]", value)
    page.click(f"{form} button[type=submit]")
    page.click("#confirm")
