"""``qlora-hub bench s3``: vault push/pull over S3 next to raw boto3 put/get of the same bytes.

For each size the vault pushes an adapter to ``s3://`` and pulls it back
(signing, chunked encryption, wrapping, conditional writes, signed records;
pull: records, signature, every chunk and hash), and a raw boto3
``put_object``/``get_object`` moves a buffer of the same length to the same
endpoint, round after round, so a load change hits both alike. A pull is
timed warm (the same vault again, as a server reloading an adapter) and cold
(a vault opened afresh before each round, as a new process: records, manifest,
key file and KEM all read again). Without ``--url`` a moto S3 server is
started on loopback in its own process.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from hub.cli import pass_state
from hub.errors import ConfigError

MB = 1 << 20


@contextlib.contextmanager
def local_moto() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 in a child process; yields its endpoint URL."""
    try:
        import moto.server  # noqa: F401
    except ImportError:
        raise ConfigError(
            "bench s3 without --url needs moto's server: pip install 'moto[server]', or pass "
            "--url s3://BUCKET/PREFIX with s3.endpoint_url set"
        ) from None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise ConfigError("the local moto S3 server did not start")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def _best(fns: dict[str, Any], repeats: int) -> dict[str, float]:
    """Best time of each ``fn()``, or of ``run(prepare())`` for a ``(prepare, run)`` pair
    (``prepare`` outside the clock), interleaved round by round."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            prepare, run = fn if isinstance(fn, tuple) else (None, fn)
            args = (prepare(),) if prepare else ()
            t0 = time.perf_counter()
            run(*args)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def run_bench(hub: Any, url: str, sizes: list[int], repeats: int, config: Path | None) -> dict:
    """Measure every size against the bucket and prefix of ``url`` (a fresh sub-prefix)."""
    from hub import teams
    from hub.config import load_settings
    from hub.store import open_backend
    from hub.testing.storage import sample_adapter
    from hub.types import AdapterRef

    url = f"{url.rstrip('/')}/bench-{uuid.uuid4().hex[:8]}"
    rows = []
    with tempfile.TemporaryDirectory(prefix="qlora-hub-bench-s3-") as tmp:
        home = Path(tmp)
        teams.create_team(home, "bench", passphrase=None)
        settings = load_settings(home, config, hub=hub)
        vault = open_backend(hub, settings, "vault", team="bench", blob_url=url)
        store = vault.blobs
        client, bucket = store.client, store.bucket
        for size in sizes:
            # 16 * r * hidden bytes of float32 LoRA weights per layer: 1 MiB a layer
            adapter = sample_adapter(f"bench{size}", size, r=16, hidden=4096, layers=size)
            nbytes = sum(len(b) for b in adapter.files.values())
            raw = os.urandom(nbytes)
            key = f"{store.prefix}raw/{size}"
            refs: list[Any] = []
            best = _best(
                {
                    "raw_put": lambda k=key, b=raw: client.put_object(Bucket=bucket, Key=k, Body=b),
                    "push": lambda a=adapter, out=refs: out.append(vault.push(a)),
                },
                repeats,
            )
            # cold: a vault opened afresh (outside the timing) each round, as a new process
            # pulls; warm: the same vault again, as a server reloading an adapter does
            best |= _best(
                {
                    "raw_get": lambda k=key: client.get_object(Bucket=bucket, Key=k)["Body"].read(),
                    "pull": lambda out=refs: vault.pull(out[-1]),
                    "pull_cold": (
                        lambda: open_backend(hub, settings, "vault", team="bench", blob_url=url),
                        lambda fresh, out=refs: fresh.pull(out[-1]),
                    ),
                },
                repeats,
            )
            assert vault.pull(refs[-1]).files == adapter.files  # checks its own output
            mbs = lambda secs, n=nbytes: round(n / MB / secs, 1)  # noqa: E731
            rows.append(
                {
                    "size_mb": round(nbytes / MB, 2),
                    "raw_put_mb_s": mbs(best["raw_put"]),
                    "push_mb_s": mbs(best["push"]),
                    "push_vs_raw": round(best["raw_put"] / best["push"], 3),
                    "raw_get_mb_s": mbs(best["raw_get"]),
                    "pull_mb_s": mbs(best["pull"]),
                    "pull_vs_raw": round(best["raw_get"] / best["pull"], 3),
                    "pull_cold_mb_s": mbs(best["pull_cold"]),
                    "pull_cold_vs_raw": round(best["raw_get"] / best["pull_cold"], 3),
                }
            )
            vault.delete(AdapterRef(f"bench{size}"))
            for k in store.keys(""):
                store.delete(k)
    return {
        "benchmark": "s3",
        "url": url,
        "endpoint": store.endpoint or "AWS S3",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "repeats": repeats,
        "results": rows,
        "target": "pull_vs_raw >= 0.7 at 16 MiB and above",
        "target_met": all(r["pull_vs_raw"] >= 0.7 for r in rows if r["size_mb"] >= 16),
    }


@click.command("s3")
@click.option("--url", default="", help="s3://BUCKET/PREFIX (default: a local moto server).")
@click.option("--sizes", default="1,16", show_default=True, help="Sizes in MiB, comma separated.")
@click.option("--repeats", default=3, show_default=True, help="Best of N per measurement.")
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON result.")
@pass_state
def bench_s3(state: Any, url: str, sizes: str, repeats: int, as_json: bool) -> None:
    """Vault push/pull MB/s over S3 next to raw boto3 put/get of the same bytes."""
    try:
        size_list = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter("use comma-separated integers, e.g. 1,16") from None
    with contextlib.ExitStack() as stack:
        if not url:
            endpoint = stack.enter_context(local_moto())
            for key, value in {
                "QLORA_HUB_S3_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "bench",
                "AWS_DEFAULT_REGION": "us-east-1",
            }.items():
                os.environ[key] = value
            import boto3

            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="qlora-hub-bench")
            url = "s3://qlora-hub-bench/vault"
        result = run_bench(state.hub, url, size_list, repeats, state.config_file)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"endpoint {result['endpoint']}")
    for r in result["results"]:
        click.echo(
            f"{r['size_mb']:>8} MiB  push {r['push_mb_s']:>7} MB/s ({r['push_vs_raw']}x raw put "
            f"{r['raw_put_mb_s']})  pull {r['pull_mb_s']:>7} MB/s ({r['pull_vs_raw']}x raw get "
            f"{r['raw_get_mb_s']}; cold {r['pull_cold_mb_s']} MB/s, {r['pull_cold_vs_raw']}x)"
        )


def add_to(cli: click.Group) -> None:
    """Attach ``bench s3``."""
    cli.commands["bench"].add_command(bench_s3)
