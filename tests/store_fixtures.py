"""Fixtures for the store's tests: a real redis-server per test module, and `store`, each test
run once on the embedded store (files under tmp_path) and once on a Redis store."""

from __future__ import annotations

import time

import pytest

from policies.export import export_devices
from policies.model import Override
from store.embedded import EmbeddedStore
from store.protocol import Store
from store.records import new_override_id
from store.redis_backend import RedisStore
from tests.redis_server import MISSING_REASON, REDIS_SERVER, RedisServer

needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason=MISSING_REASON)


def pause(class_id: str = "cm2-a", minutes: float = 60) -> Override:
    now = time.time()
    return Override(id=new_override_id(), class_id=class_id, kind="pause", until=now + minutes * 60,
                    created_at=now, created_by="test")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    if REDIS_SERVER is None:
        pytest.skip(MISSING_REASON)
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(params=["embedded", pytest.param("redis", marks=needs_redis)])
async def store(request, tmp_path):
    """An empty store of each kind (the Redis server flushed before each test)."""
    if request.param == "embedded":
        yield EmbeddedStore(tmp_path / "state")
        return
    server = request.getfixturevalue("redis_server")
    server.command("FLUSHALL")
    redis = RedisStore(server.url)
    yield redis
    await redis.close()


def another_client(store: Store) -> Store:
    """A second store object on the same state: another process on this host, or another
    instance on the same Redis."""
    if isinstance(store, EmbeddedStore):
        return EmbeddedStore(store.state_dir)
    assert isinstance(store, RedisStore), store
    return RedisStore(store.url)


async def stored_devices(store) -> str:
    """The store's device records as a policy file's `devices:` section (what the tests read
    where they once read the policy's text)."""
    return export_devices((await store.devices())[0])
