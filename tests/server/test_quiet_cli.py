"""Library noise stays off the terminal unless ``--verbose`` (real CLI runs, stderr read)."""

from __future__ import annotations

import subprocess
import sys

import pytest

BNB_NOTICE = (
    "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'"
)
NOISE = ("Loading weights", "Writing model shards", "FutureWarning", "DeprecationWarning")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hub", *args], capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_quantize_prints_no_library_noise(embedded_base, tmp_path) -> None:
    result = cli(
        "--home",
        str(tmp_path / "home"),
        "quantize",
        str(embedded_base),
        "--out",
        str(tmp_path / "q"),
    )
    assert result.returncode == 0, result.stderr
    assert "wrote nf4 checkpoint" in result.stdout
    for noise in (*NOISE, BNB_NOTICE):
        assert noise not in result.stderr, result.stderr[-2000:]


def emit_noise(verbose: bool) -> str:
    """stderr of a process that sets up the CLI, then has bitsandbytes log its CPU kernel
    notice (through bitsandbytes' own logger, as its cpu backend does on import on CPUs with
    AVX512-BF16) and a library raise a FutureWarning."""
    code = (
        "import logging, warnings\n"
        "from hub.cli import quiet_libraries\n"
        f"quiet_libraries({verbose})\n"
        "logging.getLogger('bitsandbytes.backends.cpu.ops').warning(\n"
        "    'Failed to load CPU gemm_4bit_forward from kernels-community: %s',\n"
        "    \"No module named 'kernels'\")\n"
        "warnings.warn('`past_key_values` is deprecated', FutureWarning)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    ).stderr


def test_the_bitsandbytes_notice_and_future_warnings_are_silenced() -> None:
    assert emit_noise(verbose=False) == ""


def test_verbose_shows_them() -> None:
    stderr = emit_noise(verbose=True)
    assert BNB_NOTICE in stderr
    assert "FutureWarning: `past_key_values` is deprecated" in stderr


def test_the_app_adds_no_handler_to_the_root_logger() -> None:
    """Litestar's default logging config printed every library's INFO lines (httpx's)."""
    import logging
    import types

    from server.app import create_app

    root = logging.getLogger()
    before = list(root.handlers)
    create_app(types.SimpleNamespace())
    assert root.handlers == before
