"""Training runs: the run directories ``qlora-hub train --out`` writes, read as files.

A run directory holds ``run.json`` (options), ``manifest.json`` (when finished: config,
metrics, eval loss) and ``metrics.jsonl`` (one event per log step). The loss plot is a
PNG drawn here with matplotlib from ``metrics.jsonl``; two runs side by side share one.
Files are read without following symlinks and with a size cap; a run is named only by
one of the directory's own entries, so no path comes from the request.
"""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

from litestar import Request, Response, get
from litestar.exceptions import NotFoundException

from hub.adapter_dirs import read_regular
from hub.errors import ValidationError
from server.console.app import console, page

MAX_JSON = 4 << 20
MAX_METRICS = 64 << 20
RUN_FILES = ("run.json", "manifest.json", "metrics.jsonl")
_PLOT_LOCK = threading.Lock()  # matplotlib's text layout is not thread-safe


def run_names(runs_dir: Path | None) -> list[str]:
    """Subdirectories of ``runs_dir`` that look like runs (sorted; symlinks skipped)."""
    if runs_dir is None or not runs_dir.is_dir():
        return []
    return sorted(
        p.name
        for p in runs_dir.iterdir()
        if p.is_dir() and not p.is_symlink() and any((p / f).is_file() for f in RUN_FILES)
    )


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(read_regular(path, MAX_JSON))
    except (ValueError, ValidationError):
        return {}
    return data if isinstance(data, dict) else {}


def events(run: Path) -> list[dict[str, Any]]:
    """The events of ``run``'s metrics.jsonl (lines that are not JSON objects are skipped)."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    try:
        raw = read_regular(path, MAX_METRICS)
    except ValidationError:
        return []
    out = []
    for line in raw.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            out.append(event)
    return out


def read_run(runs_dir: Path | None, name: str) -> dict[str, Any]:
    """What the pages show of run ``name``: options, metrics, eval results, last events."""
    if name not in run_names(runs_dir):
        raise NotFoundException(f"no training run named {name!r} in the runs directory")
    run = runs_dir / name
    info, manifest = _json(run / "run.json"), _json(run / "manifest.json")
    options = manifest.get("config") or info.get("options") or {}
    evs = events(run)
    steps = [e for e in evs if e.get("kind") == "step"]
    evals = {
        p.name: _json(p)
        for p in sorted(run.glob("eval*.json"))
        if p.is_file() and not p.is_symlink()
    }
    return {
        "name": name,
        "finished": bool(manifest),
        "base_fingerprint": manifest.get("base_fingerprint") or info.get("base_fingerprint"),
        "options": {k: options[k] for k in sorted(options)},
        "metrics": manifest.get("metrics") or {},
        "evals": evals,
        "eval_losses": [e for e in evs if e.get("kind") == "eval"],
        "steps": len(steps),
        "last_loss": steps[-1].get("loss") if steps else None,
        "data": manifest.get("data") or {},
    }


def loss_png(runs: list[tuple[str, list[dict[str, Any]]]]) -> bytes:
    """A PNG of training (and eval) loss against step for each ``(name, events)``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6), dpi=100)
    ax = fig.subplots()
    for name, evs in runs:
        steps = [e for e in evs if e.get("kind") == "step" and isinstance(e.get("loss"), float)]
        evals = [e for e in evs if e.get("kind") == "eval"]
        ax.plot([e["step"] for e in steps], [e["loss"] for e in steps], label=f"{name} train")
        if evals:
            ax.plot(
                [e["step"] for e in evals],
                [e["eval_loss"] for e in evals],
                "o--",
                label=f"{name} eval",
            )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("loss: " + " vs ".join(n for n, _ in runs))
    if any(e.get("loss", 0) > 0 for _, evs in runs for e in evs if e.get("kind") == "step"):
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


@get("/runs", sync_to_thread=True)
def runs(request: Request) -> Response:
    """Every run in the runs directory, with its last loss."""
    st = console(request)
    rows = [read_run(st.runs_dir, n) for n in run_names(st.runs_dir)]
    return page(request, "runs.html", runs=rows, runs_dir=str(st.runs_dir or ""))


@get("/runs/{name:str}", sync_to_thread=True)
def run_detail(request: Request) -> Response:
    """One run: the loss plot, hyperparameters, metrics and eval results."""
    st, name = console(request), request.path_params["name"]
    return page(request, "run.html", run=read_run(st.runs_dir, name), others=run_names(st.runs_dir))


@get("/runs/compare", sync_to_thread=True)
def compare(request: Request) -> Response:
    """Two runs side by side (``?a=RUN&b=RUN``); differing hyperparameters are marked."""
    st = console(request)
    a, b = request.query_params.get("a") or "", request.query_params.get("b") or ""
    left, right = read_run(st.runs_dir, a), read_run(st.runs_dir, b)
    keys = sorted(set(left["options"]) | set(right["options"]))
    rows = [(k, left["options"].get(k), right["options"].get(k)) for k in keys]
    return page(request, "compare.html", left=left, right=right, rows=rows)


@get("/plots/loss.png", sync_to_thread=True)
def plot(request: Request) -> Response:
    """The loss plot of one or two runs (``?run=A&run=B``), as PNG."""
    st = console(request)
    names = request.query_params.getall("run", [])[:2]
    if not names:
        raise NotFoundException("name one or two runs: /plots/loss.png?run=NAME")
    for n in names:
        if n not in run_names(st.runs_dir):
            raise NotFoundException(f"no training run named {n!r} in the runs directory")
    series = [(n, events(st.runs_dir / n)) for n in names]
    with _PLOT_LOCK:
        png = loss_png(series)
    return Response(png, media_type="image/png")


HANDLERS = (runs, compare, run_detail, plot)
