"""Query counters kept as plain integers on the DNS path; the metrics endpoint reads them.

Labels are the protocol, the class and the outcome (and a block's reason): never a client
address, a device or a queried name (SPEC §8).
"""

from __future__ import annotations

from bisect import bisect_left

# Seconds; the answer latency histogram's upper bounds (the last bucket is +Inf).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)



class QueryStats:
    __slots__ = ("queries", "blocks", "latency_counts", "latency_sum", "fast_answers", "rate_limited")

    def __init__(self) -> None:
        self.queries: dict[tuple[str, str, str], int] = {}  # (protocol, class, result) -> count
        self.blocks: dict[str, int] = {}  # block reason ("category:adult", "deny", ...) -> count
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.fast_answers = 0
        self.rate_limited: dict[str, int] = {}  # protocol -> queries refused by dns.rate_limit

    def record(self, protocol: str, class_id: str | None, result: str, reason: str | None,
               seconds: float) -> None:
        key = (protocol, class_id or "unknown", result)
        queries = self.queries
        queries[key] = queries.get(key, 0) + 1
        if reason is not None and result == "blocked":
            self.blocks[reason] = self.blocks.get(reason, 0) + 1
        self.latency_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
