"""The fast path: the chain's answer for the common cases, read and written as raw bytes.

It is derived from the chain, link by link (`derive`): each link gives the synchronous step made
of its own rules (`fast_step`), or says it is `slow_path_only`, and the fast path stops before
it. A query whose answer a step cannot give from bytes (a local name, a cache miss, a rewrite)
returns None and takes the chain from the start, which stays the reference: the bytes are the
same. The steps memoise what repeats (the client per address, the decision per class state and
wire name, the reply per query bytes for a second), so a popular name costs a few dict lookups.
"""

from __future__ import annotations

from collections.abc import Callable

from common.errors import ClassguardError
from resolver.chain import Client, FastQuery, FastStep, Resolver
from resolver.stats import QueryStats
from resolver.wire import RawQuery, read_query

QUERY_MEMO_LIMIT = 20_000  # distinct queries read once and kept (all forgotten when full): ~6 MB


class FastPathError(ClassguardError):
    """A link of the chain has no fast step and is not marked slow_path_only: a programming
    error, raised when the fast path is built, never on a query."""


_UNREAD = object()


def _take_the_chain(query: FastQuery) -> None:
    return None


def derive(head: Resolver) -> tuple[FastStep, tuple[Callable[[RawQuery], bool], ...]]:
    """The fast path made of the chain's links in their order: its first step, and the questions'
    filters (asked once per distinct query bytes)."""
    links = []
    link: Resolver | None = head
    while link is not None:
        links.append(link)
        link = getattr(link, "next", None)
    step: FastStep = _take_the_chain
    questions: list[Callable[[RawQuery], bool]] = []
    for link in reversed(links):
        if getattr(link, "slow_path_only", False):
            step = _take_the_chain  # nothing after it may answer: the fast path ends here
            questions.clear()
            continue
        fast_step = getattr(link, "fast_step", None)
        fast_question = getattr(link, "fast_question", None)
        if fast_step is None and fast_question is None:
            raise FastPathError(
                f"{type(link).__name__} has no fast_step or fast_question and is not marked "
                "slow_path_only: the fast path would skip it")
        if fast_question is not None:
            questions.insert(0, fast_question)
        if fast_step is not None:
            step = fast_step(step)
    return step, tuple(questions)


class FastPath:
    """Reads the question once per distinct bytes, then runs the derived steps."""

    def __init__(self, head: Resolver, clock_source, stats: QueryStats):
        self._first, self._questions = derive(head)
        # The clock the steps age answers by (a cache entry's TTL): the cache's, read per query
        # from its owner, so that a test setting the cache's clock sets this one.
        self.clock_source = clock_source
        self.stats = stats  # shared with the chain's counters: one set of counters
        self._queries: dict[bytes, RawQuery | None] = {}  # None: a question for the chain
        self._query = FastQuery()

    def answer(self, data: bytes, client_ip: str, protocol: str = "udp",
               client: Client | None = None) -> bytes | None:
        tail = data[2:]  # clients repeat the same bytes but for the id
        raw = self._queries.get(tail, _UNREAD)
        if raw is _UNREAD:
            raw = read_query(data)
            if raw is None:
                return None  # not kept: junk must not fill the memo
            if not all(may_take(raw) for may_take in self._questions):
                raw = None
            if len(self._queries) >= QUERY_MEMO_LIMIT:
                self._queries.clear()
            self._queries[tail] = raw
        if raw is None:
            return None
        query = self._query
        query.data, query.raw = data, raw
        query.client_ip, query.protocol, query.client = client_ip, protocol, client
        query.mono = self.clock_source.clock()
        return self._first(query)
