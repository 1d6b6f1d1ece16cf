"""Shared fixtures: the demo GeoIP database, the demo meeting server, proxies on free ports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import uvloop
from hypothesis import settings

from proxy.demo_upstream import DemoUpstream
from tests.helpers.proxy import ProxyFactory, demo_database

# No per-example deadline for property tests. The machine is shared and noisy: one slow example
# (a busy core, a collection) would fail a test by hypothesis's default of 200 ms. A property
# test that hangs is still caught by the suite's time.
settings.register_profile("geogate", deadline=None)
settings.load_profile("geogate")


@pytest.fixture(scope="session")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo GeoIP database, built once from config/demo/geoip.csv."""
    return demo_database(tmp_path_factory.mktemp("geoip"))


@pytest.fixture
async def upstream() -> AsyncIterator[DemoUpstream]:
    """A demo meeting server on a free loopback port."""
    async with DemoUpstream("127.0.0.1", 0) as server:
        yield server


@pytest.fixture
async def proxies(tmp_path: Path, demo_db: Path) -> AsyncIterator[ProxyFactory]:
    """Starts proxies on free ports; every one is closed when the test ends."""
    factory = ProxyFactory(tmp_path, demo_db)
    try:
        yield factory
    finally:
        await factory.close()



def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every asyncio test runs on uvloop, the event loop the proxy runs on in production."""
    return {"uvloop": uvloop.new_event_loop}
