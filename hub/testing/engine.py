"""Contract suite for :class:`hub.engines.Engine` plugins (``register_engines``).

Subclass :class:`EngineContract` and provide a class-scoped ``engine`` fixture that
returns a *started* engine on a tiny Llama base (by default the embedded base:
override ``engine_base`` to serve another). The suite checks what the server relies
on: the protocol's members and ``info``; a request streams deltas and ends once with
exact usage; greedy and seeded decoding repeat; stop strings cut the text; a
cancelled request ends early; rows with different adapters in one batch each get
their own adapter's output (the same as alone); removing an adapter; an adapter for
layers the base lacks (or above ``max_lora_rank``) is refused with
:class:`hub.engines.AdapterRefused`; a full queue raises :class:`QueueFullError`.
Adapters are random LoRAs on ``q_proj``/``v_proj`` built from the base's config.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hub.engines import AdapterRefused, Engine, GenRequest, QueueFullError, missing_members

PROMPT = "Hello, engine"
WAIT_S = 120.0


@dataclass
class Outcome:
    """What one request received: its deltas, the final event and how often it was released."""

    deltas: list[tuple[str, int]] = field(default_factory=list)
    final: tuple[Any, ...] | None = None
    finals: int = 0
    released: int = 0
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def text(self) -> str:
        return "".join(d for d, _ in self.deltas)

    def on_event(self, event: tuple[Any, ...]) -> None:
        if event[0] == "delta":
            self.deltas.append((event[1], event[2]))
        else:
            self.final, self.finals = event, self.finals + 1

    def release(self) -> None:
        self.released += 1
        self.done.set()


def lora_tensors(base: Path, *, seed: int, r: int = 8, std: float = 0.5) -> dict[str, Any]:
    """PEFT-named random ``lora_A``/``lora_B`` tensors for ``q_proj`` and ``v_proj`` of every
    layer of the Llama base in ``base`` (shapes from its ``config.json``)."""
    import torch

    cfg = json.loads((base / "config.json").read_text())
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or hidden // heads
    outs = {"q_proj": heads * head_dim, "v_proj": cfg.get("num_key_value_heads", heads) * head_dim}
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(cfg["num_hidden_layers"]):
        for module, fan_out in outs.items():
            key = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(r, hidden, generator=gen) / hidden**0.5
            tensors[f"{key}.lora_B.weight"] = torch.randn(fan_out, r, generator=gen) * std
    return tensors


def lora_config(r: int = 8) -> dict[str, Any]:
    """An ``adapter_config.json`` for :func:`lora_tensors`."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": r,
        "lora_alpha": 2 * r,
        "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": None,
    }


class EngineContract:
    """Subclass in your tests and provide a class-scoped, started ``engine`` fixture
    (``@pytest.fixture(scope="class")`` over ``@classmethod``; stop it after ``yield``).
    A small ``max_queue`` (8 to 32) keeps the queue test short.

    Class attributes:
        max_lora_rank: the largest rank the engine serves (``None``: no limit); one above
            it must be refused with :class:`AdapterRefused`.
    """

    max_lora_rank: int | None = None

    @pytest.fixture(scope="class")
    @classmethod
    def engine_base(cls, embedded_base: Path) -> Path:
        """The base directory the ``engine`` fixture serves (the adapters are built for it)."""
        return embedded_base

    # ---- helpers ---------------------------------------------------------------------------

    @staticmethod
    def request(engine: Engine, slot: int = 0, **fields: Any) -> tuple[GenRequest, Outcome]:
        """A greedy request for :data:`PROMPT` on ``slot`` (EOS suppressed: it runs to
        ``max_tokens``, 8 unless given) and the :class:`Outcome` that records it."""
        out = Outcome()
        fields.setdefault("max_tokens", 8)
        fields.setdefault("logit_bias", {int(t): -100.0 for t in engine.eos_ids})
        req = GenRequest(
            prompt_ids=list(engine.tokenizer.encode(PROMPT)),
            slot=slot,
            on_event=out.on_event,
            release=out.release,
            **fields,
        )
        return req, out

    def generate(self, engine: Engine, slot: int = 0, **fields: Any) -> Outcome:
        """Submit one request and wait for its end."""
        req, out = self.request(engine, slot, **fields)
        engine.submit(req)
        assert out.done.wait(WAIT_S), "the request never ended"
        return out

    @staticmethod
    def submit_all(engine: Engine, requests: list[GenRequest]) -> None:
        """Submit ``requests`` in order, as fast as the engine's queue takes them: an engine
        whose ``max_queue`` is smaller than the list (the guide's TinyEngine holds 8) is
        given the next one once a place frees up, not refused."""
        deadline = time.monotonic() + WAIT_S
        handed: list[GenRequest] = []
        for req in requests:
            while True:
                # at most these can still wait in its queue: any other has a token already
                waiting = sum(not r.generated for r in handed)
                try:
                    engine.submit(req)
                    handed.append(req)
                    break
                except QueueFullError:
                    assert waiting >= engine.max_queue, (
                        f"QueueFullError with at most {waiting} of max_queue="
                        f"{engine.max_queue} requests waiting"
                    )
                    assert time.monotonic() < deadline, "the engine's queue never freed a place"
                    time.sleep(0.005)

    @staticmethod
    def add(engine: Engine, base: Path, key: str, seed: int, r: int = 8) -> int:
        return engine.add_adapter(key, lora_config(r), lora_tensors(base, seed=seed, r=r))

    # ---- the protocol ----------------------------------------------------------------------

    def test_satisfies_protocol(self, engine: Engine) -> None:
        assert missing_members(engine) == []

    def test_describes_itself(self, engine: Engine) -> None:
        assert isinstance(engine.name, str) and engine.name.isidentifier()
        assert engine.info["engine"] == engine.name
        assert all(isinstance(engine.info[k], str) for k in ("format", "device", "dtype"))
        json.dumps(engine.info)  # shown in /v1/models
        assert engine.context > 0 and engine.max_queue > 0
        assert engine.eos_ids and all(isinstance(t, int) for t in engine.eos_ids)
        assert isinstance(engine.base_fingerprint, str) and engine.base_fingerprint
        assert engine.alive

    def test_streams_deltas_then_done_with_exact_usage(self, engine: Engine) -> None:
        out = self.generate(engine, max_tokens=8)
        prompt = len(engine.tokenizer.encode(PROMPT))
        usage = {"prompt_tokens": prompt, "completion_tokens": 8, "total_tokens": prompt + 8}
        assert out.final == ("done", "length", usage)
        assert (out.finals, out.released) == (1, 1)
        assert out.deltas and out.text
        counts = [n for _, n in out.deltas]
        assert counts == sorted(counts) and counts[-1] <= 8

    def test_greedy_decoding_repeats(self, engine: Engine) -> None:
        assert self.generate(engine).text == self.generate(engine).text

    def test_seeded_sampling_repeats(self, engine: Engine) -> None:
        one = self.generate(engine, temperature=1.0, seed=7, max_tokens=12)
        two = self.generate(engine, temperature=1.0, seed=7, max_tokens=12)
        assert one.text == two.text

    def test_stop_string_cuts_the_text(self, engine: Engine) -> None:
        full = self.generate(engine, max_tokens=12).text
        assert len(full) >= 4, f"too little text to pick a stop string from: {full!r}"
        stop = full[2:4]
        out = self.generate(engine, max_tokens=12, stop=[stop])
        assert out.final[:2] == ("done", "stop")
        assert out.text == full[: full.find(stop)]

    def test_cancelled_request_ends_early(self, engine: Engine) -> None:
        req, out = self.request(engine, max_tokens=400)
        engine.submit(req)
        req.cancel()
        assert out.done.wait(WAIT_S)
        assert out.final[:2] == ("done", "cancelled")
        assert out.final[2]["completion_tokens"] < 400

    def test_reports_active_rows_while_generating(self, engine: Engine) -> None:
        req, out = self.request(engine, max_tokens=400)
        engine.submit(req)
        deadline = time.monotonic() + WAIT_S
        while engine.active < 1 and not out.done.is_set() and time.monotonic() < deadline:
            time.sleep(0.001)
        seen = engine.active
        req.cancel()
        assert out.done.wait(WAIT_S)
        assert seen >= 1 and engine.queue_depth >= 0

    # ---- adapters --------------------------------------------------------------------------

    def test_two_adapters_in_one_batch_each_get_their_own(
        self, engine: Engine, engine_base: Path
    ) -> None:
        a = self.add(engine, engine_base, "contract-a@1", seed=1)
        b = self.add(engine, engine_base, "contract-b@1", seed=2)
        try:
            assert a > 0 and b > 0 and a != b
            alone = {slot: self.generate(engine, slot).text for slot in (0, a, b)}
            assert len(set(alone.values())) == 3, f"adapters change nothing: {alone}"
            pairs = [self.request(engine, slot) + (slot,) for slot in (0, a, b, a, 0)]
            for req, _, _ in pairs:
                engine.submit(req)
            for _, out, slot in pairs:
                assert out.done.wait(WAIT_S)
                assert out.text == alone[slot], f"slot {slot} in a mixed batch"
        finally:
            engine.remove_adapter(a)
            engine.remove_adapter(b)

    def test_a_base_row_batched_with_adapter_rows_decodes_as_the_base_alone(
        self, engine, engine_base: Path
    ) -> None:
        """A base row decoded in one batch with four adapters' rows is the base's text
        alone: no team's adapter reaches a row that asked for none (vLLM's CPU LoRA ops
        gave such a row the last slot's adapter)."""
        alone, alone_out = self.request(engine, 0, max_tokens=8)
        engine.submit(alone)
        assert alone_out.done.wait(WAIT_S), "the request never ended"
        handles = [self.add(engine, engine_base, f"mixed-{i}", seed=60 + i) for i in range(4)]
        try:
            rows = [self.request(engine, h, max_tokens=8) for h in handles * 2]
            base, base_out = self.request(engine, 0, max_tokens=8)
            # one call: it counts what it handed over (a second call would not see the first's)
            self.submit_all(
                engine, [req for req, _ in rows[:4]] + [base] + [r for r, _ in rows[4:]]
            )
            for _, out in [*rows, (base, base_out)]:
                assert out.done.wait(WAIT_S), "a request never ended"
        finally:
            for handle in handles:
                engine.remove_adapter(handle)
        with_adapters = {tuple(req.generated) for req, _ in rows}
        assert len(with_adapters) == 4  # the adapters were applied, each its own
        assert base.generated == alone.generated
        assert tuple(base.generated) not in with_adapters

    def test_a_removed_adapter_makes_room_for_another(
        self, engine: Engine, engine_base: Path
    ) -> None:
        base_text = self.generate(engine).text
        first = self.add(engine, engine_base, "contract-c@1", seed=3)
        engine.remove_adapter(first)
        second = self.add(engine, engine_base, "contract-c@2", seed=4)
        try:
            assert second > 0
            assert self.generate(engine, second).text != base_text
            assert self.generate(engine).text == base_text
        finally:
            engine.remove_adapter(second)

    def test_adapter_for_missing_layers_is_refused(self, engine: Engine, engine_base: Path) -> None:
        tensors = lora_tensors(engine_base, seed=5)
        key = next(k for k in tensors if k.endswith("q_proj.lora_A.weight"))
        stray = key.replace("q_proj", "nope_proj")
        tensors[stray] = tensors[key]
        tensors[stray.replace("lora_A", "lora_B")] = tensors[key.replace("lora_A", "lora_B")]
        shapes = engine.adapter_shapes()
        if shapes is not None:  # the server refuses it before the engine sees it
            module = stray.removeprefix("base_model.model.").rpartition(".lora_")[0]
            assert module not in shapes
            return
        with pytest.raises(AdapterRefused) as info:
            engine.add_adapter("contract-stray@1", lora_config(), tensors)
        assert str(info.value)

    def test_rank_above_the_maximum_is_refused(self, engine: Engine, engine_base: Path) -> None:
        if self.max_lora_rank is None:
            pytest.skip("the engine declares no max_lora_rank")
        r = self.max_lora_rank + 1
        with pytest.raises(AdapterRefused, match=str(self.max_lora_rank)):
            self.add(engine, engine_base, "contract-big@1", seed=6, r=r)

    # ---- admission -------------------------------------------------------------------------

    def test_full_queue_raises_queue_full_error(self, engine: Engine) -> None:
        outs: list[tuple[GenRequest, Outcome]] = []
        try:
            with pytest.raises(QueueFullError):
                for _ in range(engine.max_queue * 4 + 64):
                    req, out = self.request(engine, max_tokens=400)
                    engine.submit(req)
                    outs.append((req, out))
        finally:
            for req, _ in outs:
                req.cancel()
            for _, out in outs:
                assert out.done.wait(WAIT_S)
