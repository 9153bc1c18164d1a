"""Reading JSONL training data: the three row shapes, loss masks, and every bad-input error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hub.errors import ValidationError
from plugins.trainer.data import IGNORE, load_examples


@pytest.fixture(scope="module")
def tokenizer(embedded_base: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_base)


def _write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _ids(text: str) -> list[int]:
    return [b + 7 for b in text.encode()]  # the embedded tokenizer: token id = byte + 7


def test_prompt_completion_loss_is_on_completion_and_eos_only(tokenizer, tmp_path: Path) -> None:
    path = _write(tmp_path, json.dumps({"prompt": "ab:", "completion": "AB"}))
    ex = load_examples(path, tokenizer, max_length=64).examples[0]
    assert ex.input_ids == _ids("ab:") + _ids("AB") + [2]
    assert ex.labels == [IGNORE] * 3 + _ids("AB") + [2]


def test_completion_only_off_trains_on_the_prompt_too(tokenizer, tmp_path: Path) -> None:
    path = _write(tmp_path, json.dumps({"prompt": "ab:", "completion": "AB"}))
    ex = load_examples(path, tokenizer, max_length=64, completion_only=False).examples[0]
    assert ex.labels == ex.input_ids


def test_messages_use_the_chat_template_and_train_on_assistant_turns(
    tokenizer, tmp_path: Path
) -> None:
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "HI"}]}
    ex = load_examples(_write(tmp_path, json.dumps(row)), tokenizer, max_length=64).examples[0]
    # <|user|>=4 hi <|end|>=6 <|assistant|>=5 HI <|end|> </s>
    assert ex.input_ids == [4, *_ids("hi"), 6, 5, *_ids("HI"), 6, 2]
    assert ex.labels == [IGNORE] * 5 + [*_ids("HI"), 6, 2]


def test_text_rows_train_on_every_token(tokenizer, tmp_path: Path) -> None:
    ex = load_examples(_write(tmp_path, '{"text": "xyz"}'), tokenizer, max_length=64).examples[0]
    assert ex.input_ids == ex.labels == [*_ids("xyz"), 2]


def test_malformed_json_names_file_and_line(tokenizer, tmp_path: Path) -> None:
    path = _write(tmp_path, '{"text": "ok"}', '{"text": "broken"')
    with pytest.raises(ValidationError) as err:
        load_examples(path, tokenizer, max_length=64)
    assert str(err.value) == (
        f"{path}:2: malformed JSON (Expecting ',' delimiter at column 18): "
        "each line must be one JSON object"
    )


def test_row_missing_fields_names_its_keys(tokenizer, tmp_path: Path) -> None:
    path = _write(tmp_path, '{"question": "q", "answer": "a"}')
    with pytest.raises(ValidationError) as err:
        load_examples(path, tokenizer, max_length=64)
    assert str(err.value) == (
        f"{path}:1: row has keys [answer, question]; expected prompt+completion, messages, or text"
    )


def test_prompt_without_completion_is_refused(tokenizer, tmp_path: Path) -> None:
    path = _write(tmp_path, '{"prompt": "q"}')
    with pytest.raises(ValidationError) as err:
        load_examples(path, tokenizer, max_length=64)
    assert str(err.value) == (
        f"{path}:1: field 'completion' is missing or not a string: "
        "prompt rows need string prompt and completion"
    )


def test_empty_dataset_is_refused(tokenizer, tmp_path: Path) -> None:
    path = _write(tmp_path, "", "   ")
    with pytest.raises(ValidationError) as err:
        load_examples(path, tokenizer, max_length=64)
    assert str(err.value) == (
        f"{path} has no rows: add JSONL rows with prompt+completion, messages or text"
    )


def test_too_long_rows_are_truncated_and_counted(tokenizer, tmp_path: Path) -> None:
    path = _write(tmp_path, '{"text": "abcdefghij"}', '{"text": "ab"}')
    data = load_examples(path, tokenizer, max_length=5)
    assert data.truncated == 1
    assert [len(e.input_ids) for e in data.examples] == [5, 3]


def test_too_long_rows_are_refused_with_strict(tokenizer, tmp_path: Path) -> None:
    path = _write(tmp_path, '{"text": "ab"}', '{"text": "abcdefghij"}')
    with pytest.raises(ValidationError) as err:
        load_examples(path, tokenizer, max_length=5, strict=True)
    assert str(err.value) == (
        f"{path}:2: sequence of 11 tokens exceeds max_length 5: "
        "raise max_length or drop --strict to truncate"
    )


def test_rows_whose_completion_is_cut_away_are_dropped(tokenizer, tmp_path: Path) -> None:
    path = _write(tmp_path, json.dumps({"prompt": "abcdefgh", "completion": "X"}), '{"text": "a"}')
    data = load_examples(path, tokenizer, max_length=5)
    assert (data.truncated, data.dropped, len(data.examples)) == (1, 1, 1)


def test_data_sha256_is_the_file_hash(tokenizer, tmp_path: Path) -> None:
    import hashlib

    path = _write(tmp_path, '{"text": "a"}')
    data = load_examples(path, tokenizer, max_length=5)
    assert data.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
