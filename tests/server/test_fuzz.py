"""A bounded schemathesis run against the server's OpenAPI schema finds no 500."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

SCHEMATHESIS = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")


def test_schemathesis_finds_no_server_error(live_server) -> None:
    proc = subprocess.run(
        [
            SCHEMATHESIS,
            "run",
            live_server.url + "/schema/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "25",
            "--generation-deterministic",
            "--request-timeout",
            "120",
            "-H",
            f"Authorization: Bearer {live_server.keys['alpha']}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "Loaded specification" in proc.stdout
