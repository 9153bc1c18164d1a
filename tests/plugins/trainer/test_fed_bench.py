"""bench fed-accuracy's shards and fed run's learning rate across rounds (no training)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from hub.errors import ValidationError
from plugins.trainer.fedbench import SPLIT, bench_options, make_shards
from plugins.trainer.fedrun import FedPlan, round_options


def _plan(tmp_path: Path, round_lr: str = "cosine", rounds: int = 5) -> FedPlan:
    shards = {}
    for team in "ab":
        shards[team] = tmp_path / f"{team}.jsonl"
        shards[team].write_text('{"prompt": "ab:", "completion": "AB"}\n')
    opts = bench_options(60, 5e-3, 32, 16)
    return FedPlan(tmp_path, shards, rounds, "ffa", opts, round_lr=round_lr)


def test_rounds_follow_one_cosine_schedule_at_a_constant_rate_each(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    opts = [round_options(plan, k) for k in range(1, 6)]
    want = [5e-3 * (1 + math.cos(math.pi * (k - 0.5) / 5)) / 2 for k in range(1, 6)]
    assert [o.learning_rate for o in opts] == pytest.approx(want)
    assert [round(o.learning_rate / 5e-3, 3) for o in opts] == [0.976, 0.794, 0.5, 0.206, 0.024]
    assert {o.lr_scheduler for o in opts} == {"constant_with_warmup"}
    assert [o.seed for o in opts] == [0, 1, 2, 3, 4]  # a new batch order every round
    assert all(o.freeze_a and o.max_steps == 60 for o in opts)


def test_restart_gives_every_round_the_options_own_schedule(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "restart")
    opts = round_options(plan, 3)
    assert (opts.learning_rate, opts.lr_scheduler) == (5e-3, "cosine")


def test_an_unknown_round_schedule_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as err:
        _plan(tmp_path, "linear").check()
    assert str(err.value) == "fed run needs --round-lr cosine or restart, got 'linear'"


def _prompts(path: Path) -> list[str]:
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines()]


def test_first_letter_split_deals_one_word_list_into_disjoint_halves(tmp_path: Path) -> None:
    files, tests = make_shards(tmp_path, 300, 20, "first")
    a, b = _prompts(files["a"]), _prompts(files["b"])
    assert {w[0] for w in a} <= set(SPLIT["a"]) and {w[0] for w in b} <= set(SPLIT["b"])
    assert len(a) + len(b) == 600 and not set(a) & set(b)
    # every letter still occurs inside each team's words: only the first letter is split
    assert set("".join(w[1:-1] for w in a)) == set("abcdefghijklmnopqrstuvwxyz")
    assert files["union"].read_bytes() == files["a"].read_bytes() + files["b"].read_bytes()
    held = [r["prompt"] for t in "ab" for r in tests[t]]
    assert len(held) == 40 and not set(held) & (set(a) | set(b))
    assert all(r["prompt"][0] in SPLIT[t] for t in "ab" for r in tests[t])
    assert all(r["completion"] == r["prompt"][:-1].upper() for r in tests["a"])


def test_letters_split_keeps_each_team_on_its_own_letters(tmp_path: Path) -> None:
    files, tests = make_shards(tmp_path, 100, 10, "letters")
    for team in "ab":
        assert set("".join(w[:-1] for w in _prompts(files[team]))) <= set(SPLIT[team])
        assert len(tests[team]) == 10
