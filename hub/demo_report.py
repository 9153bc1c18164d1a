"""The demo's HTML report: loss curves, accuracy, footprint, timings, served answers."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _loss_chart(work: Path, runs: dict[str, dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    for info in runs.values():
        steps, losses = [], []
        metrics = Path(info["run"]) / "metrics.jsonl"
        for line in metrics.read_text().splitlines() if metrics.is_file() else []:
            event = json.loads(line)
            if event.get("kind") == "step" and "loss" in event:
                steps.append(event["step"])
                losses.append(event["loss"])
        ax.plot(steps, losses, label=f"{info['adapter']} (words starting {info['letters']})")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    return _fig_bytes(fig)


def _accuracy_chart(train: dict[str, dict[str, Any]], rounds: list[dict[str, Any]]) -> bytes:
    """Merged adapter per round, with each team alone (same steps per team) as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot([x["round"] for x in rounds], [x["accuracy"] for x in rounds], marker="o",
            label="merged (federated, ffa + CKKS)")  # fmt: skip
    for i, (team, info) in enumerate(train.items()):
        ax.axhline(info["accuracy"], linestyle=":", color=f"C{i + 2}", label=f"{team} alone")
    ax.set(xlabel="round", ylabel="exact match, union held-out", ylim=(0, 1))
    ax.set_xticks([x["round"] for x in rounds])
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _fig_bytes(fig)


def _timing_chart(stages: dict[str, dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.6), dpi=100)
    names = list(stages)
    ax.barh(names[::-1], [stages[n]["seconds"] for n in names][::-1], color="#4c72b0")
    ax.set_xlabel("seconds")
    ax.grid(axis="x", alpha=0.3)
    return _fig_bytes(fig)


def _fig_bytes(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(work: Path, summary: dict[str, Any]) -> Path:
    """Write ``<work>/report.html`` (self-contained: charts embedded as PNG data URIs)."""
    st = summary["stages"]
    train, fed, base = st["train"], st["federated"], st["base"]
    teams = [t for t, v in train.items() if isinstance(v, dict)]
    accuracy = [
        [f"team {t} alone ({train[t]['adapter']}, words starting {train[t]['letters']})",
         train[t].get("steps", ""), "", f"{train[t]['accuracy']:.0%}"]
        for t in teams
    ]  # fmt: skip
    accuracy += [
        [f"merged, round {x['round']} (ffa, CKKS)", x["steps_per_team"],
         x.get("learning_rate", ""), f"{x['accuracy']:.0%}"]
        for x in fed["rounds"]
    ]  # fmt: skip
    answers = st["serve"]["answers"]
    words = list(next(iter(answers.values())))
    served = [[f"{w}:", *[answers[m][w] for m in answers]] for w in words]
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>qlora-hub demo report</title>
<style>body{{font-family:system-ui,sans-serif;max-width:860px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:left}}
th{{background:#f3f3f3}}code{{background:#f6f6f6}}</style></head><body>
<h1>qlora-hub demo</h1>
<p>Work directory <code>{html.escape(summary["workdir"])}</code>; total {
        summary["total_seconds"]:.0f} s.</p>
<p>Browse these adapters, their readers, the audit log and the training runs in the web
console (docs/console.md): run <code>qlora-hub --home {html.escape(str(work / "home"))}
ui --team alpha --runs {html.escape(str(work / "runs"))}
--base {html.escape(str(work / "base-nf4"))}</code> and open the login URL it prints
(<a href="http://127.0.0.1:8080/">http://127.0.0.1:8080/</a>).</p>
<h2>Base footprint</h2>
{
        _table(
            ["quantized weights (bits/param)", "NF4 checkpoint (bytes)", "bf16 base (bytes)"],
            [
                [
                    f"{base['bits_per_param_quantized']:.4f}",
                    f"{base['checkpoint_bytes']:,}",
                    f"{base['bf16_bytes']:,}",
                ]
            ],
        )
    }
<h2>Training loss</h2>
<img alt="training loss" src="{_png_data_uri(_loss_chart(work, {t: train[t] for t in teams}))}">
<h2>Held-out exact match</h2>
<p>Task <code>{html.escape(fed["task"])}</code>; each team trains only on the words that
begin with its half of the alphabet; every adapter is scored on held-out words of both
halves (the union). Each team alone trains all its steps in one run; the federated rounds
spend the same steps per team, each round from the previous merge, with one cosine
learning-rate schedule over the rounds.</p>
<img alt="exact match per round" src="{
        _png_data_uri(_accuracy_chart({t: train[t] for t in teams}, fed["rounds"]))
    }">
{
        _table(
            ["adapter", "training steps per team", "round learning rate", "exact match, union"],
            accuracy,
        )
    }
<h2>Served answers</h2>
{_table(["prompt", *answers], served)}
<h2>Timings</h2>
<img alt="stage timings" src="{_png_data_uri(_timing_chart(st))}">
{_table(["stage", "seconds"], [[n, f"{s['seconds']:.1f}"] for n, s in st.items()])}
</body></html>
"""
    out = work / "report.html"
    out.write_text(page, encoding="utf-8")
    return out
