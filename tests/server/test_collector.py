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


def run_ticks(collection: IdleCollection, seconds: float, kept: list) -> None:
    """Start ``collection`` on a fresh loop and let it tick for ``seconds`` while 2,000 new
    container objects join ``kept`` every 10 ms (another server's idle collection in this
    process may collect too: the young generation then soon holds enough again)."""

    async def main() -> None:
        collection.start()
        deadline = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < deadline:
            kept.extend([] for _ in range(2000))
            await asyncio.sleep(0.01)
        collection.stop()

    asyncio.run(main())


def test_an_idle_server_collects_its_young_objects(no_automatic_collections) -> None:
    kept: list = []
    collection = IdleCollection(lambda: True, every_s=0.05, least=1000)
    run_ticks(collection, 0.5, kept)
    assert collection.collections >= 1
    assert collection._timer is None  # stopped: no tick left on the loop
    assert len(kept) >= 2000  # only collected over: every object still alive


def test_a_busy_server_or_a_small_young_generation_is_left_alone(no_automatic_collections) -> None:
    kept: list = []
    busy = IdleCollection(lambda: False, every_s=0.05, least=1000)
    run_ticks(busy, 0.3, kept)
    assert busy.collections == 0
    few = IdleCollection(lambda: True, every_s=0.05, least=10_000_000)  # fewer wait
    run_ticks(few, 0.3, kept)
    assert few.collections == 0


def test_a_disabled_collector_is_left_disabled(no_automatic_collections) -> None:
    kept: list = []
    gc.disable()
    try:
        collection = IdleCollection(lambda: True, every_s=0.05, least=1000)
        run_ticks(collection, 0.3, kept)
        assert collection.collections == 0
    finally:
        gc.enable()


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
        assert idle._timer is not None  # ticking on the app's loop
        assert idle.idle()  # nothing queued, generating or holding a place
        kept = [[] for _ in range(5000)]  # below serve.gc_threshold: no automatic collection
        deadline = time.monotonic() + 30
        # this app's idle collection, or another idle server's in this process, takes them
        while gc.get_count()[0] >= 5000 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert gc.get_count()[0] < 5000
        del kept
    assert idle._timer is None
