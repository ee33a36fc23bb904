"""Per-client rate limiting: a token bucket per identified device, else per source address."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable

from common.addresses import address_in
from resolver.chain import Client, Link, Request, Response
from resolver.stats import QueryStats

MAX_BUCKETS = 100_000  # clients tracked at once; beyond it idle buckets go, then the oldest
EXEMPT_MEMO_LIMIT = 100_000


class RateLimiter:
    """`allow(address, client)` takes one token from the client's bucket: True to answer.

    A bucket holds up to `burst` tokens and gains `qps` a second. A bucket that has refilled is
    the same as no bucket, so idle buckets are dropped when the table is full (memory stays
    bounded however many addresses, spoofed or not, send queries). Sources in `exempt` (the
    trusted forwarders, which speak for a whole school) are never limited. `clock` is settable
    so that tests can move time.
    """

    def __init__(self, qps: float, burst: int, exempt: Iterable[str] = (), *,
                 identify: Callable[[str], Client | None] | None = None,
                 clock: Callable[[], float] = time.monotonic, max_buckets: int = MAX_BUCKETS):
        if qps <= 0 or burst < 1:
            raise ValueError("a rate limit needs qps > 0 and burst >= 1")
        self.qps = float(qps)
        self.burst = float(burst)
        self.exempt = tuple(ipaddress.ip_network(net, strict=False) for net in exempt)
        self.identify = identify  # plain DNS: who the address is (a device with an address)
        self.clock = clock
        self.max_buckets = max_buckets
        self._buckets: dict[str, list[float]] = {}  # key -> [tokens, last refill time]
        self._exempt_memo: dict[str, bool] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, address: str, client: Client | None = None) -> bool:
        if self.exempt and self._is_exempt(address):
            return True
        if client is None and self.identify is not None:
            client = self.identify(address)
        # "#" cannot start an address: a device's bucket never meets an address's.
        key = "#" + client.device_id if client is not None and client.device_id else address
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_buckets:
                self._evict(now)
            self._buckets[key] = [self.burst - 1.0, now]
            return True
        tokens = bucket[0] + (now - bucket[1]) * self.qps
        if tokens > self.burst:
            tokens = self.burst
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def _evict(self, now: float) -> None:
        """Drop the buckets that have refilled (nothing is lost: a new one starts full); when a
        flood keeps more than half the table busy, drop the oldest too."""
        qps, burst = self.qps, self.burst
        buckets = self._buckets
        full = [key for key, (tokens, last) in buckets.items()
                if tokens + (now - last) * qps >= burst]
        for key in full:
            del buckets[key]
        keep = self.max_buckets // 2
        if len(buckets) > keep:
            for key in list(buckets)[:len(buckets) - keep]:  # oldest first (insertion order)
                del buckets[key]

    def _is_exempt(self, address: str) -> bool:
        memo = self._exempt_memo
        exempt = memo.get(address)
        if exempt is None:
            exempt = address_in(address, self.exempt)
            if len(memo) >= EXEMPT_MEMO_LIMIT:
                memo.clear()
            memo[address] = exempt
        return exempt


class RateLimitLink(Link):
    """`dns.rate_limit` at the head of the chain. Its check runs at the door, before the query is
    even read (a flood costs as little as possible), because each transport refuses in its own
    way (UDP drops, TCP and DoT answer REFUSED, DoH says 429): every listener calls `admit`
    first. A query it let in has passed, on either path."""

    def __init__(self, limiter: RateLimiter | None, stats: QueryStats):
        self.limiter = limiter  # None: no limit
        self.stats = stats

    def admit(self, client_ip: str, protocol: str, client: Client | None = None) -> bool:
        """False when the limit refuses this query (counted per protocol); trusted forwarders
        are exempt."""
        limiter = self.limiter
        if limiter is None or limiter.allow(client_ip, client):
            return True
        counts = self.stats.rate_limited
        counts[protocol] = counts.get(protocol, 0) + 1
        return False

    async def resolve(self, request: Request) -> Response:
        return await self.next.resolve(request)  # admitted at the door

    def fast_step(self, following):
        return following  # admitted at the door
