"""server.sampling.sample: one token or one RowError per row, each row on its own."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest

torch = pytest.importorskip("torch")

from server.sampling import NON_FINITE_LOGITS, NON_FINITE_PROBS, RowError, Sampled, sample  # noqa: E402


@dataclass
class Row:
    temperature: float = 0.0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: int | None = None
    generator: torch.Generator | None = None
    generated: list[int] = field(default_factory=list)


def seeded(seed: int = 0, **kw) -> Row:
    return Row(generator=torch.Generator().manual_seed(seed), **kw)


def logits_of(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_a_row_with_nan_logits_fails_alone() -> None:
    logits = logits_of([0.0, 3.0, 1.0], [float("nan"), 0.0, 0.0], [5.0, 0.0, 1.0])
    out = sample(logits, [Row(), Row(), Row()])
    assert out == [Sampled(1), RowError(NON_FINITE_LOGITS), Sampled(0)]


def test_a_row_with_infinite_logits_fails_alone_when_sampling() -> None:
    logits = logits_of([0.0, float("inf"), 1.0], [0.0, 9.0, 0.0])
    out = sample(logits, [seeded(temperature=1.0), seeded(temperature=1.0)])
    assert out[0] == RowError(NON_FINITE_LOGITS)
    assert isinstance(out[1], Sampled)


def test_temperature_below_the_epsilon_is_greedy_even_beside_sampled_rows() -> None:
    logits = logits_of([0.0, 2.0, 1.0], [1.0, 0.0, 3.0])
    out = sample(logits, [Row(temperature=1e-40), seeded(temperature=1.0)])
    assert out[0] == Sampled(1)
    assert isinstance(out[1], Sampled)


def test_huge_logits_over_a_small_temperature_fail_that_row_only() -> None:
    """Logits of 3e38 / 1e-4 overflow float32: this row fails, the greedy row does not."""
    logits = logits_of([3e38, -3e38, 0.0], [0.0, 1.0, 0.0])
    out = sample(logits, [seeded(temperature=1e-4), Row()])
    assert out == [RowError(NON_FINITE_PROBS), Sampled(1)]


def test_logit_bias_forces_a_token() -> None:
    logits = logits_of([5.0, 0.0, 0.0])
    assert sample(logits, [Row(logit_bias={2: 100.0})]) == [Sampled(2)]


def test_frequency_penalty_counts_every_occurrence_and_presence_penalty_once() -> None:
    logits = logits_of([3.0, 2.5, 0.0])
    # token 0 seen twice: 3.0 - 2 * 0.5 = 2.0 < 2.5
    assert sample(logits, [Row(frequency_penalty=0.5, generated=[0, 0])]) == [Sampled(1)]
    # presence: 3.0 - 0.4 = 2.6 > 2.5 however often token 0 was seen
    assert sample(logits, [Row(presence_penalty=0.4, generated=[0, 0, 0])]) == [Sampled(0)]


def test_logprobs_are_the_models_log_softmax_with_the_top_alternatives() -> None:
    logits = logits_of([1.0, 3.0, 2.0, 0.0])
    expected = torch.log_softmax(logits[0], -1)
    (got,) = sample(logits, [Row(logprobs=2, logit_bias={3: 50.0})])
    assert got.token == 3  # the bias picks the token; logprobs stay the model's own
    assert math.isclose(got.logprob, float(expected[3]), rel_tol=1e-6)
    assert [t for t, _ in got.top] == [1, 2]
    assert [lp for _, lp in got.top] == pytest.approx([float(expected[1]), float(expected[2])])


def test_same_generator_seed_samples_the_same_token() -> None:
    logits = logits_of(*[[0.0] * 50] * 2)
    a, b = sample(logits, [seeded(3, temperature=1.0), seeded(3, temperature=1.0)])
    assert a == b


def test_rows_asking_for_different_logprobs_read_back_in_one_transfer() -> None:
    """Rows with 0, 3 and no alternatives, beside a failing row, in one call: each gets its own
    entries, and the call counts exactly one device-to-host read."""
    logits = logits_of(
        [1.0, 3.0, 2.0, 0.0], [0.5, 0.0, 5.0, 1.0], [float("nan")] * 4, [2.0, 1.0, 0.0, 0.0]
    )
    stats = {"syncs": 0}
    out = sample(logits, [Row(logprobs=0), Row(logprobs=3), Row(logprobs=2), Row()], stats)
    lp = torch.log_softmax(logits, -1)
    assert out[0] == Sampled(1, pytest.approx(float(lp[0, 1])), ())
    assert out[1].token == 2 and [t for t, _ in out[1].top] == [2, 3, 0]
    assert [v for _, v in out[1].top] == pytest.approx([float(lp[1, t]) for t in (2, 3, 0)])
    assert out[2] == RowError(NON_FINITE_LOGITS)
    assert out[3] == Sampled(0)
    assert stats == {"syncs": 1}


def test_sampling_draws_what_torch_multinomial_draws_from_the_same_generator() -> None:
    """Seeded results are the same as ``torch.multinomial`` on the row's generator (what the
    engine used before sampling moved onto the device)."""
    logits = torch.randn(1, 64, generator=torch.Generator().manual_seed(0))
    for seed in range(20):
        (got,) = sample(logits, [seeded(seed, temperature=0.7, top_p=0.9)])
        probs = torch.softmax(logits[0] / 0.7, -1)
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < 0.9
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        want = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed))
        assert got.token == int(want[0])
