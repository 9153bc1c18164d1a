"""``qlora-hub serve --engine vllm`` as a real process: vault adapters to the ``openai``
client, each team seeing only its own (404 otherwise), plaintext never left in RAM files."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from .conftest import NO_VLLM

QLORA_HUB = str(Path(sys.executable).parent / "qlora-hub")


def _vault_home(home: Path, base: Path) -> dict[str, str]:
    """Teams alpha, beta and server in one vault; ``mine`` (alpha's) and ``theirs`` (beta's),
    both shared with the server; an API key per team. Returns the keys."""
    from hub import teams
    from hub.config import load_settings
    from hub.plugins import Hub
    from hub.store import open_store
    from server.auth import KeyStore
    from server.random_adapter import random_lora_payload

    for team in ("alpha", "beta", "server"):
        teams.create_team(home, team, passphrase=None)
    (home / "qlora-hub.toml").write_text('[hub]\nstorage = "vault"\n')
    hub = Hub()
    settings = load_settings(home, hub=hub)
    for team, name, seed in (("alpha", "mine", 1), ("beta", "theirs", 2)):
        store = open_store(hub, settings, team=team)
        store.push(
            random_lora_payload(base, name, seed=seed, r=8), team=team, share_with=["server"]
        )
    keys = KeyStore(home)
    return {"alpha": keys.create("alpha")[1], "beta": keys.create("beta")[1]}


def _wait_ready(proc: subprocess.Popen, url: str, timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server did not become ready"
        time.sleep(1)


@pytest.mark.slow
def test_serve_engine_vllm_serves_vault_adapters_per_team(tmp_path: Path, embedded_base: Path):
    pytest.importorskip("vllm", reason=NO_VLLM)
    openai = pytest.importorskip("openai")
    keys = _vault_home(tmp_path, embedded_base)
    ram = Path(tempfile.mkdtemp(prefix="qlora-hub-test-", dir="/dev/shm"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "QLORA_HUB_HOME": str(tmp_path),
        "QLORA_HUB_VLLM_KV_CACHE_GIB": "1",
        "QLORA_HUB_VLLM_RAM_DIR": str(ram),
    }
    cmd = [QLORA_HUB, "serve", "--base", str(embedded_base), "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--engine", "vllm"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url)
        alpha = openai.OpenAI(base_url=url + "/v1", api_key=keys["alpha"], max_retries=0)
        beta = openai.OpenAI(base_url=url + "/v1", api_key=keys["beta"], max_retries=0)
        alpha_models = {m.id for m in alpha.models.list().data}
        base_info = httpx.get(
            url + "/v1/models/base",
            headers={"Authorization": f"Bearer {keys['alpha']}"},
            timeout=30,
        ).json()["engine"]
        mine = alpha.completions.create(model="mine", prompt="vault:", max_tokens=6, temperature=0)
        plain = alpha.completions.create(model="base", prompt="vault:", max_tokens=6, temperature=0)
        with pytest.raises(openai.NotFoundError):
            alpha.completions.create(model="theirs", prompt="x", max_tokens=2)
        with pytest.raises(openai.NotFoundError):
            beta.completions.create(model="mine", prompt="x", max_tokens=2)
        theirs = beta.chat.completions.create(
            model="theirs",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=4,
            temperature=0,  # greedy: sampled, the base may end within four tokens
            stream=True,
        )
        chunks = list(theirs)
        left_in_ram = list(ram.iterdir())
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=120)
        ram.rmdir()
    assert alpha_models == {"base", "mine"}
    assert base_info["engine"] == "vllm"
    assert (base_info["format"], base_info["device"], base_info["dtype"]) == (
        "unquantized",
        "cpu",
        "float32",
    )
    assert mine.usage.completion_tokens == 6 and mine.choices[0].finish_reason == "length"
    assert mine.choices[0].text != plain.choices[0].text  # the adapter is applied
    assert chunks[-1].choices[0].finish_reason == "length"
    assert left_in_ram == []  # each adapter's RAM copy was removed once vLLM had loaded it
    assert "Traceback" not in out
