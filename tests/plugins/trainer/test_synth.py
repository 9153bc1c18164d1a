"""``data synth``: deterministic synthetic tasks with a disjoint held-out split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hub.errors import ValidationError
from plugins.trainer.synth import TASKS, synthesize


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_upper_rows_map_words_to_uppercase(tmp_path: Path) -> None:
    paths = synthesize("upper", 50, tmp_path, held_out=10)
    rows = _rows(paths["train"])
    assert len(rows) == 50
    assert all(r["completion"] == r["prompt"][:-1].upper() for r in rows)


def test_held_out_words_never_appear_in_training(tmp_path: Path) -> None:
    paths = synthesize("reverse", 500, tmp_path, held_out=200)
    train = {r["prompt"] for r in _rows(paths["train"])}
    held = {r["prompt"] for r in _rows(paths["held_out"])}
    assert len(held) == 200 and not train & held


def test_same_seed_writes_the_same_bytes(tmp_path: Path) -> None:
    a = synthesize("sort", 30, tmp_path / "a", held_out=5)
    b = synthesize("sort", 30, tmp_path / "b", held_out=5)
    assert a["train"].read_bytes() == b["train"].read_bytes()
    assert a["held_out"].read_bytes() == b["held_out"].read_bytes()


def test_held_out_split_does_not_depend_on_n(tmp_path: Path) -> None:
    a = synthesize("upper", 30, tmp_path / "a", held_out=20)
    b = synthesize("upper", 300, tmp_path / "b", held_out=20)
    assert a["held_out"].read_bytes() == b["held_out"].read_bytes()


def test_every_task_has_a_distinct_answer_function() -> None:
    answers = {name: fn("hello") for name, fn in TASKS.items()}
    assert answers == {
        "upper": "HELLO",
        "reverse": "olleh",
        "capitalize": "Hello",
        "sort": "ehllo",
        "rot13": "uryyb",
    }


def test_unknown_task_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as err:
        synthesize("shout", 10, tmp_path)
    assert str(err.value) == (
        "unknown task 'shout': known tasks are upper, reverse, capitalize, sort, rot13"
    )


def test_cli_synth_writes_both_files(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from hub.cli import make_cli
    from hub.plugins import Hub

    out = tmp_path / "d"
    result = CliRunner().invoke(
        make_cli(Hub()),
        ["data", "synth", "upper", "--n", "20", "--held-out", "4", "--out", str(out)],
        obj=Hub(),
    )
    assert result.exit_code == 0, result.output
    assert result.output == (
        f"wrote 20 rows to {out / 'train.jsonl'} and 4 to {out / 'held_out.jsonl'}\n"
    )
