"""Counters and the query log: what every answer came to, fast path or chain, counted once."""

from __future__ import annotations

import logging
from time import perf_counter

from dnslib import RCODE

from common.results import RESULTS
from resolver.answers import empty_reply
from resolver.chain import Link, Request, Response, failure
from resolver.stats import QueryStats

log = logging.getLogger("classguard.server")


class RecordLink(Link):
    """On the way back: the counters (labels: protocol, class, result, block reason) and the
    query log's list append. A question asked to explain a decision is neither."""

    def __init__(self, stats: QueryStats):
        self.stats = stats
        self.query_log = None  # privacy.querylog.QueryLog, set by the service: offer() only

    async def resolve(self, request: Request) -> Response:
        try:
            response = await self.next.resolve(request)
        except Exception as exc:  # the client gets SERVFAIL, the log says what went wrong
            log.error("error answering a query: %s", failure(exc))
            response = Response(empty_reply(request.query, RCODE.SERVFAIL), "servfail")
        if request.explain:
            return response
        result = RESULTS.get(response.source, response.source)
        client = request.client
        self.stats.record(request.protocol, client.class_id if client else None, result,
                          response.reason, perf_counter() - request.received)
        query_log = self.query_log
        if query_log is not None:  # a list append, never awaited; the log's own task does the rest
            query_log.offer(request.protocol, client, request.client_ip, request.qname, result,
                            response.reason)
        return response

    def fast_step(self, following):
        stats = self.stats

        def step(query) -> bytes | None:
            started = perf_counter()
            wire = following(query)
            if wire is not None:
                stats.fast_answers += 1
                stats.record(query.protocol, query.client.class_id, query.result, query.reason,
                             perf_counter() - started)
                query_log = self.query_log
                if query_log is not None:  # a list append; the log's own task does the rest
                    query_log.offer(query.protocol, query.client, query.client_ip, query.raw.qname,
                                    query.result, query.reason)
            return wire
        return step
