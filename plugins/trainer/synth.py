"""Synthetic word tasks for demos and tests: deterministic, with a disjoint held-out split.

Every task maps a random lowercase "word" (3-8 letters) to a string: ``upper``
(``cat -> CAT``), ``reverse`` (``cat -> tac``), ``capitalize``, ``sort``
(letters in order) and ``rot13``. Rows are ``{"prompt": "<word>:", "completion": "<answer>"}``.
The same seed gives the same words (and the same held-out words) for every task.
"""

from __future__ import annotations

import codecs
import json
import os
import random
from collections.abc import Callable
from pathlib import Path

from hub.errors import ValidationError

TASKS: dict[str, Callable[[str], str]] = {
    "upper": str.upper,
    "reverse": lambda w: w[::-1],
    "capitalize": str.capitalize,
    "sort": lambda w: "".join(sorted(w)),
    "rot13": lambda w: codecs.encode(w, "rot13"),
}
"""Task name -> the function from word to answer."""

TRAIN_FILE = "train.jsonl"
HELD_OUT_FILE = "held_out.jsonl"


def prompt_for(word: str) -> str:
    """The prompt a synthetic row uses for ``word``."""
    return f"{word}:"


ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def words(count: int, seed: int = 0, letters: str = ALPHABET) -> list[str]:
    """``count`` distinct random words over ``letters``, the same for the same seed.

    ``letters`` restricts the alphabet, e.g. ``"abcdefghijklm"``: federated
    experiments give each team words over its own part of the alphabet.
    """
    check_letters(letters)
    if count > sum(len(letters) ** k for k in range(3, 9)) // 2:
        raise ValidationError(
            f"{count} words over {len(letters)} letters: use more letters or fewer words"
        )
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < count:
        word = "".join(rng.choice(letters) for _ in range(rng.randint(3, 8)))
        if word not in seen:
            seen.add(word)
            out.append(word)
    return out


def check_letters(letters: str) -> str:
    """At least 2 distinct lowercase ASCII letters."""
    if len(set(letters)) < 2 or set(letters) - set(ALPHABET) or len(set(letters)) != len(letters):
        raise ValidationError(
            f"--letters {letters!r}: give 2-26 distinct lowercase letters, e.g. abcdefghijklm"
        )
    return letters


def rows(task: str, word_list: list[str]) -> list[dict[str, str]]:
    """Prompt/completion rows of ``task`` over ``word_list``."""
    if task not in TASKS:
        raise ValidationError(f"unknown task {task!r}: known tasks are {', '.join(TASKS)}")
    fn = TASKS[task]
    return [{"prompt": prompt_for(w), "completion": fn(w)} for w in word_list]


def _write_jsonl(path: Path, items: list[dict[str, str]]) -> None:
    tmp = path.with_name(path.name + ".partial")
    with tmp.open("w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def synthesize(
    task: str,
    n: int,
    out_dir: Path,
    *,
    held_out: int = 200,
    seed: int = 0,
    letters: str = ALPHABET,
) -> dict[str, Path]:
    """Write ``train.jsonl`` (``n`` rows) and ``held_out.jsonl`` (``held_out`` rows) to ``out_dir``.

    Words use only ``letters``. The held-out words never appear in the training file. Returns
    ``{"train": path, "held_out": path}``.
    """
    if n <= 0 or held_out < 0:
        raise ValidationError(f"--n must be positive and --held-out >= 0, got {n} and {held_out}")
    if task not in TASKS:
        raise ValidationError(f"unknown task {task!r}: known tasks are {', '.join(TASKS)}")
    pool = words(n + held_out, seed, letters)
    # held-out words come first so they stay the same whatever n is
    test, train = pool[:held_out], pool[held_out:]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"train": out_dir / TRAIN_FILE, "held_out": out_dir / HELD_OUT_FILE}
    _write_jsonl(paths["train"], rows(task, train))
    _write_jsonl(paths["held_out"], rows(task, test))
    return paths
