"""`quantize --report --method X` reports X: its format is the headline, others are refused."""

from __future__ import annotations

import json

import pytest

from hub.testing import run_cli


def test_report_headlines_the_method_asked_for(embedded_base, tmp_path):
    import io

    from rich.console import Console

    from plugins.nf4.report import print_report

    res = run_cli("--home", str(tmp_path), "quantize", str(embedded_base), "--report",
                  "--method", "fp4", "--json")  # fmt: skip
    assert res.exit_code == 0, res.err
    report = json.loads(res.out)
    assert report["method"] == "fp4"
    out = io.StringIO()
    print_report(report, console=Console(file=out, width=250))
    assert "method fp4" in out.getvalue() and "bits fp4" in out.getvalue()
    assert "bits nf4" not in out.getvalue()


@pytest.mark.parametrize("method", ["int8", "none"])
def test_report_refuses_a_method_it_cannot_measure(method, tmp_path):
    res = run_cli("--home", str(tmp_path), "quantize", "no-such-model", "--report",
                  "--method", method)  # fmt: skip
    assert (res.exit_code, res.err) == (
        2,
        "error: --report measures the 4-bit formats (nf4, fp4); it has no figures for method "
        f"'{method}': quantize with it using --out DIR instead\n",
    )
