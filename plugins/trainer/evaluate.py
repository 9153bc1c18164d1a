"""Greedy exact-match evaluation: batched generation with left padding."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plugins.trainer.data import read_rows, row_format


@dataclass
class EvalResult:
    """Accuracy and the individual predictions."""

    accuracy: float
    correct: int
    total: int
    predictions: list[dict[str, str]] = field(default_factory=list)


def prompt_and_answer(row: dict[str, Any], tokenizer: Any, where: str = "row") -> tuple[str, str]:
    """The text to feed the model and the expected completion of one evaluation row."""
    fmt = row_format(row, where)
    if fmt == "prompt":
        return row["prompt"], row["completion"]
    if fmt == "messages":
        prompt = tokenizer.apply_chat_template(
            row["messages"][:-1], tokenize=False, add_generation_prompt=True
        )
        return prompt, row["messages"][-1]["content"]
    from hub.errors import ValidationError

    raise ValidationError(f"{where}: text rows have no expected answer; use prompt+completion")


def generate(
    model: Any, tokenizer: Any, prompts: list[str], *, max_new_tokens: int, batch_size: int = 64
) -> list[str]:
    """Greedy completions of ``prompts`` (left-padded batches; special tokens stripped)."""
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation appends on the right, so pad on the left
    outs: list[str] = []
    try:
        model.eval()
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i : i + batch_size]
            batch = tokenizer(chunk, return_tensors="pt", padding=True)
            batch = {k: v.to(model.device) for k, v in batch.items()}
            with torch.no_grad():
                out = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            width = batch["input_ids"].shape[1]
            outs += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return outs


def exact_match(
    model: Any, tokenizer: Any, rows: list[dict[str, Any]], *, batch_size: int = 64
) -> EvalResult:
    """Share of ``rows`` whose greedy completion equals the expected one exactly.

    Args:
        model: a causal LM (base, ``PeftModel``, or merged model).
        tokenizer: its tokenizer.
        rows: ``{"prompt", "completion"}`` or ``{"messages"}`` dicts.
        batch_size: prompts per ``generate`` call.
    """
    pairs = [prompt_and_answer(r, tokenizer, f"row {i + 1}") for i, r in enumerate(rows)]
    longest = max(
        (len(tokenizer(a, add_special_tokens=False)["input_ids"]) for _, a in pairs), default=1
    )
    got = generate(
        model, tokenizer, [p for p, _ in pairs], max_new_tokens=longest + 2, batch_size=batch_size
    )
    preds = [{"prompt": p, "expected": a, "got": g} for (p, a), g in zip(pairs, got, strict=True)]
    correct = sum(1 for x in preds if x["got"] == x["expected"])
    return EvalResult(correct / len(preds) if preds else 0.0, correct, len(preds), preds)


def exact_match_file(model: Any, tokenizer: Any, path: Path, *, batch_size: int = 64) -> EvalResult:
    """:func:`exact_match` over a JSONL file (errors name file and line)."""
    rows = []
    for lineno, row in read_rows(Path(path)):
        row_format(row, f"{path}:{lineno}")
        rows.append(row)
    return exact_match(model, tokenizer, rows, batch_size=batch_size)
