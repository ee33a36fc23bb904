"""The Redis store's connection: reaching Redis (or its sentinels), outages turned into
StoreUnavailable with a backoff, health for /readyz, and the change channel between instances."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from store.records import StoreError, StoreUnavailable

log = logging.getLogger("classguard.store.redis")

PREFIX = "classguard:"
CONNECT_TIMEOUT = 1.0  # seconds; the watcher is the one waiting, never a DNS answer
# one immediate retry: a pooled connection to a Redis that restarted fails once, then reconnects
COMMAND_TIMEOUT = 2.0
# A health check answers within this, below the readiness probe's own limit (classguard.metrics):
# a Redis that accepts connections and never answers (hung, kill -STOP) is away, like one that
# refuses them, and both are a note of /readyz, never a reason to leave rotation.
HEALTH_TIMEOUT = 1.0
BACKOFF_FIRST, BACKOFF_MAX = 0.25, 2.0  # seconds between attempts while Redis is away
SENTINEL_SCHEME = "redis+sentinel"


def redacted_url(url: str) -> str:
    """A store URL without its password, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path}"


def _sentinel_client(url: str, **options) -> aioredis.Redis:
    """redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]"""
    from redis.asyncio.sentinel import Sentinel  # lazy: only for a redis+sentinel:// store

    parts = urlsplit(url)
    netloc = parts.netloc
    password = None
    if "@" in netloc:
        credentials, netloc = netloc.rsplit("@", 1)
        password = unquote(credentials.partition(":")[2]) or None
    hosts = []
    for item in netloc.split(","):
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = rest.lstrip(":")
        elif ":" in item:
            host, _, port = item.rpartition(":")
        else:
            host, port = item, ""
        hosts.append((host, int(port or 26379)))
    path = [part for part in parts.path.split("/") if part]
    if not path:
        raise StoreError("store: redis+sentinel:// needs the service name: "
                         "redis+sentinel://HOST:26379,HOST:26379/SERVICE")
    db = int(path[1]) if len(path) > 1 else 0
    sentinel = Sentinel(hosts, socket_timeout=options["socket_timeout"],
                        sentinel_kwargs={"socket_timeout": options["socket_timeout"]})
    return sentinel.master_for(path[0], db=db, password=password, **options)


class RedisConnection:
    """One instance's connection to the shared Redis: every other part of RedisStore reaches
    Redis through `run`, under `key`'s prefix."""

    def __init__(self, url: str, *, prefix: str = PREFIX, state_dir: Path | str | None = None) -> None:
        # state_dir is for the parts that keep files (LostStoreRecovery); the connection has none
        self.url = url
        query = parse_qs(urlsplit(url).query)
        self.prefix = query.get("prefix", [prefix])[0]
        self.instance = secrets.token_hex(6)  # our own pub/sub echoes are ignored
        self._client: aioredis.Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._down_since: float | None = None
        self._next_try = 0.0
        self._backoff = BACKOFF_FIRST
        self._subscriber: asyncio.Task | None = None
        self.changed: asyncio.Event | None = None
        # exported by classguard.metrics (STORE_COUNTERS) as classguard_store_*_total
        self.counters = {"outages": 0, "reconnects": 0, "lost_store": 0, "restored": 0,
                         "minutes_dropped": 0, "lists_published": 0, "lists_fetched": 0}

    def key(self, name: str) -> str:
        return self.prefix + name

    def _connect(self) -> aioredis.Redis:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            options = dict(socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=COMMAND_TIMEOUT,
                           retry=Retry(NoBackoff(), 1), health_check_interval=0)
            if urlsplit(self.url).scheme == SENTINEL_SCHEME:
                self._client = _sentinel_client(self.url, **options)
            else:
                self._client = aioredis.Redis.from_url(self.url.split("?")[0], **options)
            self._loop = loop
        return self._client

    async def run(self, operation):
        """`operation(client)`, with Redis being away turned into StoreUnavailable, said once."""
        now = time.monotonic()
        if self._down_since is not None and now < self._next_try:
            raise StoreUnavailable(f"Redis ({redacted_url(self.url)}) is unreachable")
        task = asyncio.current_task()
        cancelling = task.cancelling() if task is not None else 0
        try:
            result = await operation(self._connect())
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError,
                asyncio.TimeoutError) as exc:
            _still_cancelled(task, cancelling)
            if self._down_since is None:
                self._down_since = now
                self._backoff = BACKOFF_FIRST
                self.counters["outages"] += 1
                log.error("Redis (%s) is unreachable (%s): serving the last snapshot, "
                          "trying again with backoff", redacted_url(self.url), exc)
            else:
                self._backoff = min(self._backoff * 2, BACKOFF_MAX)
            self._next_try = now + self._backoff
            raise StoreUnavailable(f"Redis ({redacted_url(self.url)}) is unreachable: {exc}") from None
        except redis.exceptions.RedisError as exc:
            _still_cancelled(task, cancelling)
            raise StoreError(f"Redis ({redacted_url(self.url)}): {exc}") from None
        _still_cancelled(task, cancelling)
        if self._down_since is not None:
            log.warning("Redis (%s) is back after %.1f s: resynchronising", redacted_url(self.url),
                        now - self._down_since)
            self._down_since = None
            self.counters["reconnects"] += 1
            if self.changed is not None:
                self.changed.set()
        return result

    @property
    def available(self) -> bool:
        return self._down_since is None

    async def health(self) -> str | None:
        """None while Redis answers; else that it is away and for how long: the server answers
        from its snapshot meanwhile, which /readyz reports as a note, not as a reason."""
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT):
                await self.run(lambda r: r.ping())
        except StoreUnavailable:
            away = time.monotonic() - self._down_since if self._down_since is not None else 0.0
            return (f"Redis ({redacted_url(self.url)}) unreachable for {away:.0f} s; answering from "
                    "this instance's snapshot")
        except TimeoutError:
            return (f"Redis ({redacted_url(self.url)}) not answering within {HEALTH_TIMEOUT:.0f} s "
                    "(hung?); answering from this instance's snapshot")
        return None

    def subscribe(self) -> asyncio.Event:
        """An event set when another instance writes; the subscription reconnects with backoff
        and ignores this instance's own writes."""
        if self.changed is None or self._subscriber is None or self._subscriber.done():
            self.changed = asyncio.Event()
            self._subscriber = asyncio.create_task(self._listen())
        return self.changed

    async def _listen(self) -> None:
        delay = BACKOFF_FIRST
        while True:
            pubsub = None
            try:
                pubsub = self._connect().pubsub()
                await pubsub.subscribe(self.key("changes"))
                delay = BACKOFF_FIRST
                self.changed.set()  # anything missed while away is read at once
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    if message is None or message.get("type") != "message":
                        continue
                    sender = message["data"].decode(errors="replace").partition(" ")[0]
                    if sender != self.instance:
                        self.changed.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away, or a reply we did not expect
                log.debug("change channel: %s; subscribing again in %.2f s", exc, delay)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def close(self) -> None:
        """Stop the subscription and close the connections (the store can be used again)."""
        if self._subscriber is not None:
            self._subscriber.cancel()
            await asyncio.gather(self._subscriber, return_exceptions=True)
            self._subscriber = None
        if self._client is not None:
            client, self._client, self._loop = self._client, None, None
            with contextlib.suppress(Exception):
                await client.aclose()


def _still_cancelled(task: asyncio.Task | None, cancelling: int) -> None:
    """Raise CancelledError when the task was cancelled during a Redis call that returned (or
    failed) all the same: redis-py can swallow a cancellation that arrives while a connection is
    being made again after Redis restarted, and the server's stop then waited forever on the
    store watcher it had cancelled."""
    if task is not None and task.cancelling() > cancelling:
        raise asyncio.CancelledError()
