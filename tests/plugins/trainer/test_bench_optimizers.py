"""``bench train --optimizers``: name checks, the per-optimizer row and the ratios (no training here;
a real run on the CPU is in tests/hub/test_gpubench.py's tiny profile)."""

from __future__ import annotations

import pytest

from hub.errors import HubError
from hub.plugins import Hub
from hub.testing import run_cli
from plugins.trainer.bench_optimizers import check_names, ratios, summarize


def _sample(seconds: float, peak: int) -> dict:
    return {
        "seconds": seconds, "tokens": 1000, "useful_tokens": 800, "train_loss": 5.0,
        "device": "cuda:0", "optimizer": {"ran": "paged_adamw_32bit", "paged": True},
        "memory": {"peak_bytes": peak, "peak_kind": "cuda_max_memory_allocated",
                   "optimizer_state_bytes": 64, "estimate": {"total_bytes": 400,
                                                             "peak_over_estimate": 1.5}},
        "peak_rss_bytes": 10,
    }  # fmt: skip


def test_a_row_keeps_the_fastest_repeat_and_the_highest_peak() -> None:
    row = summarize([_sample(2.0, 600), _sample(1.0, 500)])
    assert (row["seconds"], row["all_seconds"]) == (1.0, [2.0, 1.0])
    assert (row["tokens_per_s"], row["useful_tokens_per_s"]) == (1000.0, 800.0)
    assert (row["peak_bytes"], row["peak_kind"]) == (600, "cuda_max_memory_allocated")
    assert (row["estimate_bytes"], row["peak_over_estimate"]) == (400, 1.5)
    assert row["optimizer"]["paged"] is True and row["device"] == "cuda:0"


def test_ratios_compare_every_optimizer_with_the_first_named() -> None:
    runs = {
        "adamw": {"tokens_per_s": 100.0, "peak_bytes": 1000},
        "paged_adamw_32bit": {"tokens_per_s": 90.0, "peak_bytes": 800},
        "paged_adamw_8bit": {"tokens_per_s": 50.0, "peak_bytes": 0},
    }
    assert ratios(runs) == {
        "paged_adamw_32bit/adamw": {"tokens_per_s": 0.9, "peak_bytes": 0.8},
        "paged_adamw_8bit/adamw": {"tokens_per_s": 0.5, "peak_bytes": None},
    }


@pytest.mark.parametrize(
    ("names", "tail"),
    [(["adamw", "lion"], " (lion unknown)"), (["adamw", "adamw"], ""), ([], "")],
)
def test_unknown_repeated_or_no_names_are_one_line_listing_the_known(names, tail) -> None:
    import plugins.paged

    hub = Hub(builtins=False, entry_points=False, extra=[("paged", plugins.paged)])
    with pytest.raises(HubError) as err:
        check_names(hub, names)
    known = "adamw, adamw_8bit, paged_adamw_32bit, paged_adamw_8bit"
    given = ",".join(names) or "(none)"
    assert str(err.value) == f"--optimizers {given}: give distinct names from {known}{tail}"


def test_the_command_refuses_a_bad_device_or_shape_before_any_work(tmp_path) -> None:
    bad_device = run_cli("--home", str(tmp_path), "bench", "train", "--optimizers", "adamw",
                         "--device", "tpu")  # fmt: skip
    assert bad_device.err == "error: --device tpu: not a device; use auto, cpu, cuda or cuda:N\n"
    bad_shape = run_cli("--home", str(tmp_path), "bench", "train", "--shape", "7b")
    assert bad_shape.exit_code == 2
    assert bad_shape.err.startswith("error: unknown base shape '7b': choose one of embedded")
