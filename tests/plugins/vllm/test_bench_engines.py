"""``qlora-hub bench serve --engines``: names are checked before any work."""

from __future__ import annotations

from hub.testing.cli import run_cli


def test_bench_serve_refuses_an_unknown_engine_before_any_work(tmp_path) -> None:
    result = run_cli("--home", str(tmp_path), "bench", "serve", "--engines", "hf,nope")
    assert result.exit_code == 2
    assert result.err.strip() == (
        "error: unknown engine 'nope': registered engines are hf, vllm "
        "(pick one with serve --engine or the setting serve.engine)"
    )
    assert list(tmp_path.iterdir()) == []  # nothing was built or published
