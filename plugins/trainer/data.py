"""Training data: JSONL rows to token ids and labels, with errors that name file and line.

Three row shapes are accepted, one per line:

- ``{"prompt": ..., "completion": ...}``: loss on the completion only (by default);
- ``{"messages": [{"role", "content"}, ...]}``: rendered with the tokenizer's chat
  template; loss on the assistant turns only (by default);
- ``{"text": ...}``: loss on every token.

Each example ends with the tokenizer's EOS token so the model learns to stop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.digest import sha256_file
from hub.errors import ValidationError

IGNORE = -100
"""Label of tokens that carry no loss (prompt tokens, padding)."""


@dataclass
class Example:
    """One tokenized row: ``input_ids``, ``labels`` (``-100`` where no loss) and its line number."""

    input_ids: list[int]
    labels: list[int]
    line: int


@dataclass
class EncodedData:
    """A tokenized dataset and what happened while reading it."""

    path: Path
    examples: list[Example]
    sha256: str
    truncated: int = 0
    """Rows cut to ``max_length``."""
    dropped: int = 0
    """Truncated rows left with no token that carries loss, so not used."""
    formats: dict[str, int] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        """Total tokens (no padding)."""
        return sum(len(e.input_ids) for e in self.examples)


def read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` for every non-blank line; malformed lines raise naming ``file:line``."""
    path = Path(path)
    if not path.is_file():
        raise ValidationError(f"data file {path} does not exist: check the --data path")
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                raise ValidationError(
                    f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno}): "
                    "each line must be one JSON object"
                ) from None
            if not isinstance(row, dict):
                raise ValidationError(
                    f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}"
                )
            rows.append((lineno, row))
    if not rows:
        raise ValidationError(
            f"{path} has no rows: add JSONL rows with prompt+completion, messages or text"
        )
    return rows


def row_format(row: dict[str, Any], where: str) -> str:
    """``"prompt"``, ``"messages"`` or ``"text"``; anything else raises naming the keys it has."""
    if "prompt" in row or "completion" in row:
        for key in ("prompt", "completion"):
            if not isinstance(row.get(key), str):
                raise ValidationError(
                    f"{where}: field {key!r} is missing or not a string: "
                    "prompt rows need string prompt and completion"
                )
        return "prompt"
    if "messages" in row:
        msgs = row["messages"]
        if (
            not isinstance(msgs, list)
            or not msgs
            or not all(
                isinstance(m, dict)
                and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)
                for m in msgs
            )
        ):
            raise ValidationError(
                f"{where}: messages must be a non-empty list of {{role, content}} string objects"
            )
        if msgs[-1]["role"] != "assistant":
            raise ValidationError(f"{where}: the last message must have role 'assistant'")
        return "messages"
    if "text" in row:
        if not isinstance(row["text"], str):
            raise ValidationError(f"{where}: field 'text' must be a string")
        return "text"
    keys = ", ".join(sorted(row)) or "none"
    raise ValidationError(
        f"{where}: row has keys [{keys}]; expected prompt+completion, messages, or text"
    )


def _ids(tokenizer: Any, text: str, special: bool = False) -> list[int]:
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def _chat_pieces(tokenizer: Any, msgs: list[dict[str, str]], where: str) -> list[tuple[str, bool]]:
    """The rendered conversation as ``(text, trainable)`` pieces; assistant turns are trainable."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValidationError(f"{where}: messages rows need a tokenizer with a chat template")
    render = tokenizer.apply_chat_template
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, msg in enumerate(msgs):
        if msg["role"] != "assistant":
            continue
        prefix = (
            render(msgs[:i], tokenize=False, add_generation_prompt=True)
            if i
            else render([], tokenize=False, add_generation_prompt=True)
        )
        through = render(msgs[: i + 1], tokenize=False)
        if not prefix.startswith(done) or not through.startswith(prefix):
            raise ValidationError(
                f"{where}: the chat template does not render turns as prefixes of each other"
            )
        pieces += [(prefix[len(done) :], False), (through[len(prefix) :], True)]
        done = through
    return pieces


def encode_row(
    row: dict[str, Any], tokenizer: Any, where: str, *, completion_only: bool = True
) -> tuple[list[int], list[int], str]:
    """Token ids, labels and the format of one row (no truncation)."""
    fmt = row_format(row, where)
    eos = tokenizer.eos_token_id
    if fmt == "prompt":
        prompt = _ids(tokenizer, row["prompt"], special=True)
        completion = _ids(tokenizer, row["completion"]) + [eos]
        labels = ([IGNORE] * len(prompt) if completion_only else prompt) + completion
        return prompt + completion, labels, fmt
    if fmt == "text":
        ids = _ids(tokenizer, row["text"], special=True) + [eos]
        return ids, list(ids), fmt
    ids: list[int] = []
    labels: list[int] = []
    for text, trainable in _chat_pieces(tokenizer, row["messages"], where):
        piece = _ids(tokenizer, text)
        ids += piece
        labels += piece if (trainable or not completion_only) else [IGNORE] * len(piece)
    return ids + [eos], labels + [eos], fmt


def load_examples(
    path: Path,
    tokenizer: Any,
    *,
    max_length: int,
    strict: bool = False,
    completion_only: bool = True,
) -> EncodedData:
    """Read and tokenize a JSONL file.

    Args:
        path: the JSONL file.
        tokenizer: a Hugging Face tokenizer (its chat template is used for ``messages``).
        max_length: longest sequence in tokens; longer ones are cut at the end and counted
            (``EncodedData.truncated``; rows whose completion is cut away entirely are dropped
            and counted in ``EncodedData.dropped``), or refused when ``strict``.
        strict: refuse over-long rows instead of truncating them.
        completion_only: loss on completions / assistant turns only.
    """
    path = Path(path)
    data = EncodedData(path=path, examples=[], sha256=sha256_file(path) if path.is_file() else "")
    for lineno, row in read_rows(path):
        where = f"{path}:{lineno}"
        ids, labels, fmt = encode_row(row, tokenizer, where, completion_only=completion_only)
        data.formats[fmt] = data.formats.get(fmt, 0) + 1
        if len(ids) > max_length:
            if strict:
                raise ValidationError(
                    f"{where}: sequence of {len(ids)} tokens exceeds max_length {max_length}: "
                    "raise max_length or drop --strict to truncate"
                )
            ids, labels = ids[:max_length], labels[:max_length]
            data.truncated += 1
            if all(label == IGNORE for label in labels):
                data.dropped += 1  # the cut removed every token that carries loss
                continue
        data.examples.append(Example(ids, labels, lineno))
    return data


def split_eval(data: EncodedData, fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic train/eval split of the examples (eval gets ``fraction``, at least 1 row)."""
    import random

    examples = list(data.examples)
    if fraction <= 0 or len(examples) < 2:
        return examples, []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(round(len(examples) * fraction)))
    eval_idx = set(order[:n_eval])
    return (
        [e for i, e in enumerate(examples) if i not in eval_idx],
        [e for i, e in enumerate(examples) if i in eval_idx],
    )
