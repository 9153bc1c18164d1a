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

Each ratio is given from the best rounds (``pull_vs_raw``, the target's) and from
the median ones. With the local server its CPU time is read as well: a pull can
take no less wall time than the CPU time it costs both processes spread over the
machine's cores, so ``pull_vs_raw_cpu_bound`` (the best raw get over the least
CPU time of any pull, per core) is the best ratio this code allows on this
machine. With ``--url`` only the client's CPU time counts: a looser bound.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import statistics
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
    with local_moto_process() as (url, _):
        yield url


@contextlib.contextmanager
def local_moto_process() -> Iterator[tuple[str, int]]:
    """:func:`local_moto`, yielding the endpoint URL and the server's process id."""
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
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


class _Clock:
    """Wall time, this process's CPU time (every thread) and, when the S3 server is a local
    process, that process's CPU time (to the nanosecond through its CPU-time clock on Linux;
    psutil's 10 ms ticks elsewhere), read around the wall clock."""

    def __init__(self, server_pid: int | None) -> None:
        self.server: Any = None
        if server_pid is not None:
            try:
                clock = _cpu_clock_of(server_pid)
                time.clock_gettime(clock)
                self.server = lambda: time.clock_gettime(clock)
            except (OSError, AttributeError):  # no such clock (not Linux)
                import psutil

                process = psutil.Process(server_pid)
                self.server = lambda: sum(process.cpu_times()[:2])

    def start(self) -> tuple[float, float, float]:
        server = self.server() if self.server else 0.0
        return time.process_time(), server, time.perf_counter()

    def stop(self) -> tuple[float, float, float]:
        wall = time.perf_counter()
        return time.process_time(), self.server() if self.server else 0.0, wall


def _cpu_clock_of(pid: int) -> int:
    """The CPU-time clock of process ``pid`` (clock_getcpuclockid(3)); OSError if none."""
    import ctypes

    clock = ctypes.c_int()
    err = ctypes.CDLL(None).clock_getcpuclockid(pid, ctypes.byref(clock))
    if err:
        raise OSError(err, "clock_getcpuclockid")
    return clock.value


def _measure(fns: dict[str, Any], repeats: int, clock: _Clock) -> dict[str, dict[str, float]]:
    """For each ``fn()``, or ``run(prepare())`` for a ``(prepare, run)`` pair (``prepare``
    outside the clock), interleaved round by round: the best and the median wall time, and
    the mean CPU time of this process and of the server's (0 when not local), and the
    least CPU time (both processes) of any round, which bounds the best round."""
    walls: dict[str, list[float]] = {name: [] for name in fns}
    cpus: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            prepare, run = fn if isinstance(fn, tuple) else (None, fn)
            args = (prepare(),) if prepare else ()
            c0, s0, t0 = clock.start()
            run(*args)
            c1, s1, t1 = clock.stop()
            walls[name].append(t1 - t0)
            cpus[name].append((c1 - c0, s1 - s0))
    return {
        name: {
            "best": min(walls[name]),
            "median": statistics.median(walls[name]),
            "cpu": statistics.fmean(c for c, _ in cpus[name]),
            "server_cpu": statistics.fmean(s for _, s in cpus[name]),
            # a round can end no sooner than its CPU time over the cores: the best round no
            # sooner than the least CPU any round took
            "least_cpu": min(c + s for c, s in cpus[name]),
        }
        for name in fns
    }


def _cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_bench(
    hub: Any,
    url: str,
    sizes: list[int],
    repeats: int,
    config: Path | None,
    server_pid: int | None = None,
) -> dict:
    """Measure every size against the bucket and prefix of ``url`` (a fresh sub-prefix).

    ``server_pid``: the S3 server's process when it runs on this machine (its CPU time is
    then measured too, and the CPU bound of each pull/raw-get ratio given).
    """
    from hub import teams
    from hub.config import load_settings
    from hub.store import open_backend
    from hub.testing.storage import sample_adapter
    from hub.types import AdapterRef

    url = f"{url.rstrip('/')}/bench-{uuid.uuid4().hex[:8]}"
    clock, cores = _Clock(server_pid), _cores()
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
            m = _measure(
                {
                    "raw_put": lambda k=key, b=raw: client.put_object(Bucket=bucket, Key=k, Body=b),
                    "push": lambda a=adapter, out=refs: out.append(vault.push(a)),
                },
                repeats,
                clock,
            )
            # cold: a vault opened afresh (outside the timing) each round, as a new process
            # pulls; warm: the same vault again, as a server reloading an adapter does
            m |= _measure(
                {
                    "raw_get": lambda k=key: client.get_object(Bucket=bucket, Key=k)["Body"].read(),
                    "pull": lambda out=refs: vault.pull(out[-1]),
                    "pull_cold": (
                        lambda: open_backend(hub, settings, "vault", team="bench", blob_url=url),
                        lambda fresh, out=refs: fresh.pull(out[-1]),
                    ),
                },
                repeats,
                clock,
            )
            assert vault.pull(refs[-1]).files == adapter.files  # checks its own output
            best = {name: v["best"] for name, v in m.items()}
            mbs = lambda secs, n=nbytes: round(n / MB / secs, 1)  # noqa: E731
            ms = lambda secs: round(secs * 1000, 1)  # noqa: E731
            # A pull can take no less wall time than its CPU time, the server's included,
            # spread over every core: the best pull/raw-get ratio this code allows here.
            pull_cpu = m["pull"]["least_cpu"]
            rows.append(
                {
                    "size_mb": round(nbytes / MB, 2),
                    "raw_put_mb_s": mbs(best["raw_put"]),
                    "push_mb_s": mbs(best["push"]),
                    "push_vs_raw": round(best["raw_put"] / best["push"], 3),
                    "raw_get_mb_s": mbs(best["raw_get"]),
                    "pull_mb_s": mbs(best["pull"]),
                    "pull_vs_raw": round(best["raw_get"] / best["pull"], 3),
                    "pull_vs_raw_median": round(m["raw_get"]["median"] / m["pull"]["median"], 3),
                    "pull_cold_mb_s": mbs(best["pull_cold"]),
                    "pull_cold_vs_raw": round(best["raw_get"] / best["pull_cold"], 3),
                    "cpu_ms": {
                        name: {
                            "client": ms(m[name]["cpu"]),
                            "server": ms(m[name]["server_cpu"]),
                            "least_round": ms(m[name]["least_cpu"]),
                        }
                        for name in ("raw_get", "pull")
                    },
                    "pull_vs_raw_cpu_bound": round(best["raw_get"] / (pull_cpu / cores), 3),
                }
            )
            vault.delete(AdapterRef(f"bench{size}"))
            for k in store.keys(""):
                store.delete(k)
    return {
        "benchmark": "s3",
        "url": url,
        "endpoint": store.endpoint or "AWS S3",
        "machine": {"cpus": cores, "platform": platform.platform()},
        "server_cpu_measured": server_pid is not None,
        "repeats": repeats,
        "results": rows,
        "target": "pull_vs_raw >= 0.7 at 16 MiB and above",
        "target_met": all(r["pull_vs_raw"] >= 0.7 for r in rows if r["size_mb"] >= 16),
    }


@click.command("s3")
@click.option("--url", default="", help="s3://BUCKET/PREFIX (default: a local moto server).")
@click.option("--sizes", default="1,16", show_default=True, help="Sizes in MiB, comma separated.")
@click.option(
    "--repeats", default=3, show_default=True, help="Rounds per measurement (best and median)."
)
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON result.")
@pass_state
def bench_s3(state: Any, url: str, sizes: str, repeats: int, as_json: bool) -> None:
    """Vault push/pull MB/s over S3 next to raw boto3 put/get of the same bytes."""
    try:
        size_list = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter("use comma-separated integers, e.g. 1,16") from None
    server_pid = None  # an endpoint given by --url: its CPU time is not ours to read
    with contextlib.ExitStack() as stack:
        if not url:
            endpoint, server_pid = stack.enter_context(local_moto_process())
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
        result = run_bench(state.hub, url, size_list, repeats, state.config_file, server_pid)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"endpoint {result['endpoint']}")
    for r in result["results"]:
        click.echo(
            f"{r['size_mb']:>8} MiB  push {r['push_mb_s']:>7} MB/s ({r['push_vs_raw']}x raw put "
            f"{r['raw_put_mb_s']})  pull {r['pull_mb_s']:>7} MB/s ({r['pull_vs_raw']}x raw get "
            f"{r['raw_get_mb_s']}; medians {r['pull_vs_raw_median']}x; cold "
            f"{r['pull_cold_mb_s']} MB/s, {r['pull_cold_vs_raw']}x; at most "
            f"{r['pull_vs_raw_cpu_bound']}x on {result['machine']['cpus']} cores"
            f"{'' if result['server_cpu_measured'] else ', client CPU only'})"
        )


def add_to(cli: click.Group) -> None:
    """Attach ``bench s3``."""
    cli.commands["bench"].add_command(bench_s3)
