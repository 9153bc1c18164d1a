"""Minimal, complete examples of the registrable interfaces (docs/writing-plugins.md).

Each object passes its contract suite in ``hub.testing``
(tests/hub/test_doc_examples.py and tests/hub/test_engines.py run them).
"""

from hub import hookimpl


@hookimpl
def register_quantizers(register):
    from qlora_hub_minimal.quantizer import Bf16Quantizer

    register(Bf16Quantizer())


@hookimpl
def register_adapters(register):
    from qlora_hub_minimal.adapter import TinyLora

    register(TinyLora())


@hookimpl
def register_aggregators(register):
    from qlora_hub_minimal.aggregator import make_aggregator

    register(make_aggregator())


@hookimpl
def register_engines(register):
    def tiny(hub, settings, source):
        from pathlib import Path

        from qlora_hub_minimal.engine import TinyEngine

        # source: a Hugging Face directory, or a base the server loaded already
        return TinyEngine(Path(getattr(source, "source", source)))

    register("tiny", tiny)
