"""``qlora-hub bench gpu``: sections in their own processes, failures and time limits recorded,
the JSON rewritten as it goes; on CPU with the embedded base it runs end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hub.gpubench import ROOT, SECTIONS, run_child, summarize

NOT_ON_THE_GPU_MACHINE = ("litestar", "uvicorn", "msgspec", "cryptography", "tenseal", "boto3")
"""Packages the GPU machine lacks: every process of the run sees them as not installed."""

BLOCKER = f"""
import sys
for name in {NOT_ON_THE_GPU_MACHINE!r}:
    sys.modules[name] = None  # import raises ImportError, importlib.util.find_spec says None
"""


def _bench(
    tmp_path: Path, *args: str, timeout: float = 1800
) -> tuple[subprocess.CompletedProcess, dict]:
    """``bench gpu`` as the GPU machine runs it: ``python -m hub``, without the packages it lacks."""
    out = tmp_path / "gpu.json"
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": f"{blocker}{os.pathsep}{ROOT}",
           "QLORA_HUB_HOME": str(tmp_path / "home")}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "hub", "bench", "gpu", "--out", str(out), "--device", "cpu",
         "--shape", "embedded", *args],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=timeout,
    )  # fmt: skip
    assert out.is_file(), proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def test_a_section_past_its_limit_is_killed_and_its_stderr_kept():
    start = time.monotonic()
    script = "import sys, time; print('working on it', file=sys.stderr, flush=True); time.sleep(60)"
    status, seconds, _, tail = run_child("slow", ["-c", script], dict(os.environ), 2)
    assert status == "timeout"
    assert tail == "working on it"
    assert 2 <= seconds < 15 and time.monotonic() - start < 20


def test_a_failing_child_reports_its_exit_status_and_last_stderr_lines():
    script = "import sys; [print(f'line {i}', file=sys.stderr) for i in range(40)]; sys.exit(3)"
    status, _, _, tail = run_child("bad", ["-c", script], dict(os.environ), 30)
    assert status == "error (exit status 3)"
    assert tail.splitlines() == [f"line {i}" for i in range(15, 40)]


def test_a_failing_section_records_its_error_and_the_next_section_runs(tmp_path):
    not_a_model = tmp_path / "empty-base"
    not_a_model.mkdir()
    proc, report = _bench(tmp_path, "--base", str(not_a_model), "--sections", "serve,machine")
    assert proc.returncode == 0, proc.stderr[-3000:]
    serve, machine = report["sections"]["serve"], report["sections"]["machine"]
    assert serve["status"].startswith("error (exit status")
    assert "config.json" in serve["error"]  # the loader's own message, from the child's stderr
    assert machine["status"] == "ok"
    assert machine["result"]["torch"] and machine["result"]["python"]
    assert "[serve]" in proc.stderr and "section machine: ok" in proc.stderr  # progress lines
    assert report["summary"]["mixed32_vs_single1"] is None
    assert report["finished_utc"]


def test_sigterm_kills_the_running_section_and_keeps_the_report(tmp_path):
    import signal

    import psutil

    out = tmp_path / "gpu.json"
    (tmp_path / "base").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub", "bench", "gpu", "--out", str(out), "--device", "cpu",
         "--base", str(tmp_path / "base"), "--sections", "machine"],
        stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    for line in proc.stderr:
        if "section machine (limit" in line:
            break
    deadline = time.monotonic() + 20
    while not (children := psutil.Process(proc.pid).children(recursive=True)):
        assert time.monotonic() < deadline, "the section's process never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    assert "terminated: what finished is in" in proc.stderr.read()
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    report = json.loads(out.read_text())
    assert report["sections"]["machine"]["status"] == "killed"
    assert "signal 15" in report["sections"]["machine"]["error"]
    assert report["interrupted_utc"]


def test_an_unknown_section_is_refused_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "hub", "bench", "gpu", "--out", str(tmp_path / "x.json"),
         "--sections", "serve,warp"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: unknown section 'warp': choose from " + ", ".join(SECTIONS)
    )
    assert not (tmp_path / "x.json").exists()


def test_summary_ratios_come_from_the_sections_that_finished():
    report = {
        "sections": {
            "serve": {"result": {"single1": {"tokens_per_s": 100.0},
                                 "mixed8": {"tokens_per_s": 90.0},
                                 "mixed32": {"tokens_per_s": 85.0}}},
            "naive": {"result": {"naive8": {"tokens_per_s": 20.0}}},
            "decode": {"status": "timeout", "result": {"bound_tokens_per_s": 1000.0}},
        }
    }  # fmt: skip
    summary = summarize(report)
    assert summary["mixed32_vs_single1"] == 0.85
    assert summary["mixed8_vs_naive8"] == 4.5
    assert summary["decode_b1_engine_vs_plain_bnb"] is None
    assert summary["targets"]["mixed8_vs_naive8"] == 3.0


@pytest.mark.slow
def test_bench_gpu_runs_every_section_on_cpu_with_the_embedded_base(tmp_path):
    proc, report = _bench(tmp_path, "--budget-s", "1500")
    assert proc.returncode == 0, proc.stderr[-3000:]
    sections = report["sections"]
    failed = {k: v.get("error", "")[-800:] for k, v in sections.items() if v["status"] != "ok"}
    assert failed == {}
    assert list(sections) == list(SECTIONS)
    serve = sections["serve"]["result"]
    for name in ("single1", "mixed8", "mixed32"):
        assert serve[name]["failures"] == 0
        assert serve[name]["completion_tokens"] == 8 * 4  # every request exactly max_tokens
        assert serve[name]["tokens_per_s"] > 0
        assert serve[name]["ttft_p50_ms"] <= serve[name]["latency_p50_ms"]
    decode = sections["decode"]["result"]
    assert decode["copy_bandwidth_gb_s"] > 0
    assert decode["bytes_per_token"]["quant_state"] > 0
    assert decode["bound_tokens_per_s"] > decode["engine_base"]["decode_tokens_per_s"] > 0
    assert decode["plain_transformers_bnb"]["decode_tokens_per_s"] > 0
    naive = sections["naive"]["result"]
    assert naive["naive8"]["completion_tokens"] == 4 * 4
    assert naive["peft_adapter_names_static_batch"]["tokens"] == 4 * 4
    quant = sections["quantize"]["result"]
    assert 4.1 < quant["footprint"]["quantized_bits_per_param"] < 4.2
    assert quant["pre_quantized"]["loader"] == "direct"
    train = sections["train"]["result"]
    assert set(train["runs"]) == {"adamw", "paged_adamw_32bit"}
    assert all(r["tokens_per_s"] > 0 and r["estimate_bytes"] > 0 for r in train["runs"].values())
    summary = report["summary"]
    assert summary["mixed32_vs_single1"] > 0 and summary["mixed8_vs_naive8"] > 0
    assert summary["decode_b1_engine_vs_plain_bnb"] > 0
    assert sections["machine"]["result"]["commit"]
