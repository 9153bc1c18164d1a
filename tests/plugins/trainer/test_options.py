"""Training options: precedence, one error listing every problem, TOML files."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.errors import ConfigError, ValidationError
from plugins.trainer.manifest import check_resumable
from plugins.trainer.options import build_options


def test_flags_override_toml_which_overrides_settings(tmp_path: Path) -> None:
    toml = tmp_path / "train.toml"
    toml.write_text("[train]\nr = 8\nlearning_rate = 0.001\n")
    opts = build_options({"r": 4, "batch_size": 2}, toml, {"learning_rate": 0.01})
    assert (opts.r, opts.batch_size, opts.learning_rate) == (8, 2, 0.01)


def test_rank_zero_or_below_is_refused() -> None:
    with pytest.raises(ValidationError) as err:
        build_options(flags={"r": -1})
    assert str(err.value) == "invalid training options: r must be > 0, got -1"


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(ValidationError) as err:
        build_options(flags={"r": 0, "learning_rate": -1.0, "lr_scheduler": "steep"})
    assert str(err.value) == (
        "invalid training options: r must be > 0, got 0; learning_rate must be > 0, got -1.0; "
        "lr_scheduler must be one of cosine, linear, constant, constant_with_warmup, got 'steep'"
    )


def test_unknown_toml_key_is_refused(tmp_path: Path) -> None:
    toml = tmp_path / "train.toml"
    toml.write_text("rank = 8\n")
    with pytest.raises(ConfigError, match=r"unknown training option 'rank'"):
        build_options(toml_file=toml)


def test_resume_with_other_base_and_rank_says_what_differs() -> None:
    old = {"base_fingerprint": "a" * 64, "data_sha256": "d", "options": {"r": 8, "max_steps": 5}}
    new = {"base_fingerprint": "b" * 64, "data_sha256": "d", "options": {"r": 16, "max_steps": 9}}
    with pytest.raises(ValidationError) as err:
        check_resumable(old, new)
    assert str(err.value) == (
        "cannot resume: the checkpoint was trained with a different base (aaaaaaaaaaaa vs "
        "bbbbbbbbbbbb), r (8 vs 16); start a new run without --resume"
    )
