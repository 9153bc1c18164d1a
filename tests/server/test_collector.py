"""Young collections taken while the server is idle (server/collector.py), so a burst of
requests at an idle server does not pay for what earlier traffic left behind."""

from __future__ import annotations

import asyncio
import gc

import pytest

from server.collector import IdleCollection


@pytest.fixture
def no_automatic_collections():
    """Only the idle collection may collect meanwhile: the young count is then what this
    test made (Python's own threshold is set out of reach, then given back)."""
    saved = gc.get_threshold()
    gc.collect()
    gc.set_threshold(10_000_000, *saved[1:])
    yield
    gc.set_threshold(*saved)


def run_ticks(collection: IdleCollection, seconds: float) -> int:
    """Start ``collection`` on a fresh loop, let it tick for ``seconds``; the young count
    left at the end (objects made meanwhile are kept alive by the caller)."""

    async def main() -> int:
        collection.start()
        await asyncio.sleep(seconds)
        collection.stop()
        return gc.get_count()[0]

    return asyncio.run(main())


def test_an_idle_server_collects_its_young_objects(no_automatic_collections) -> None:
    kept = [[] for _ in range(5000)]  # container objects the young generation now holds
    assert gc.get_count()[0] >= 5000
    collection = IdleCollection(lambda: True, every_s=0.05, least=1000)
    left = run_ticks(collection, 0.5)
    assert collection.collections >= 1
    assert left < 1000  # the 5,000 (alive) moved on to an older generation
    assert collection._timer is None  # stopped: no tick left on the loop
    del kept


def test_a_busy_server_or_a_small_young_generation_is_left_alone(no_automatic_collections) -> None:
    kept = [[] for _ in range(5000)]
    busy = IdleCollection(lambda: False, every_s=0.05, least=1000)
    assert run_ticks(busy, 0.3) >= 5000
    assert busy.collections == 0
    few = IdleCollection(lambda: True, every_s=0.05, least=50_000)  # fewer than least wait
    assert run_ticks(few, 0.3) >= 5000
    assert few.collections == 0
    del kept


def test_a_disabled_collector_is_left_disabled(no_automatic_collections) -> None:
    kept = [[] for _ in range(5000)]
    gc.disable()
    try:
        collection = IdleCollection(lambda: True, every_s=0.05, least=1000)
        assert run_ticks(collection, 0.3) >= 5000
        assert collection.collections == 0
    finally:
        gc.enable()
    del kept


def test_the_served_app_collects_while_idle_and_stops_at_shutdown(
    small_home, embedded_base
) -> None:
    import time

    from litestar.testing import TestClient

    from hub.config import load_settings
    from server.app import build_state, create_app

    settings = load_settings(small_home["home"])
    settings.override("hub.storage", "local")
    hub = small_home["hub"]
    state = build_state(hub, settings, embedded_base, small_home["store"], identity="server")
    app = create_app(state, hub)
    idle = app.state.idle_collection
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        kept = [[] for _ in range(5000)]  # below serve.gc_threshold: no automatic collection
        deadline = time.monotonic() + 30
        while idle.collections == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert idle.collections >= 1 and gc.get_count()[0] < 5000
        del kept
    assert idle._timer is None
