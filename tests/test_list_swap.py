"""A refresh while the resolver answers: compiled in a worker, swapped in whole, the old one dropped."""

from __future__ import annotations

import asyncio
import textwrap
import weakref
from pathlib import Path

import dns.rcode
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from blocklists import update
from blocklists.settings import BlocklistSettings, ListSource
from classguard.config import Config
from classguard.service import prepare
from resolver.settings import DnsSettings
from tests.conftest import POLICY, PUPILS, RunningResolver

FILLER = "".join(f"filler-{number}.example\n" for number in range(50_000))


async def test_queries_are_answered_during_a_refresh(tmp_path: Path, upstream,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    upstream.add("first.example", "A", "198.51.100.9")
    served = {"text": "first.example\n" + FILLER}

    async def adult_list(request: web.Request) -> web.Response:
        return web.Response(text=served["text"])  # no ETag: every refresh downloads it

    app = web.Application()
    app.router.add_get("/adult.txt", adult_list)
    site = TestServer(app, host="127.0.0.1", port=0)
    await site.start_server()
    policy = tmp_path / "policy.yaml"
    policy.write_text(textwrap.dedent(POLICY))
    source = ListSource(name="remote", format="domains", category="adult",
                        url=str(site.make_url("/adult.txt")))
    config = Config(state_dir=tmp_path / "state", policies=policy,
                    dns=DnsSettings(listen=("127.0.0.1:0",), upstreams=(upstream.url,),
                                    upstream_timeout=1.0),
                    blocklists=BlocklistSettings(sources=(source,), bundled=False, refresh=0.2))
    service = prepare(config)
    await service.start()
    try:
        resolver = RunningResolver(service, service.udp_addresses[0][1])
        for _ in range(500):  # the first fill
            if service.state.lists_loaded:
                break
            await asyncio.sleep(0.02)
        first = service.state.snapshot.lists
        assert first is not None and first.categories_of("first.example")
        first_ref = weakref.ref(first)
        del first

        served["text"] = "second.example\n" + FILLER  # picked up by the next refresh
        answers: list[tuple[str, str]] = []
        swapped = False
        for _ in range(1000):  # queries keep flowing while the worker compiles
            for name in ("first.example", "www.example.com"):
                reply = await resolver.query(name, source=PUPILS, timeout=2.0)
                address = reply.answer[0][0].address if reply.answer else "-"
                answers.append((name, f"{dns.rcode.to_text(reply.rcode())} {address}"))
            if service.state.snapshot.lists is not None and \
                    not service.state.snapshot.lists.categories_of("first.example"):
                swapped = True
                break
            await asyncio.sleep(0.01)
        assert swapped, "the refreshed lists never came in"
        # Until the swap, the old table blocked; never a moment without lists, never a failure.
        assert {answer for name, answer in answers if name == "first.example"} <= {
            "NOERROR 0.0.0.0", "NOERROR 198.51.100.9"}
        assert {answer for name, answer in answers if name == "www.example.com"} == {
            "NOERROR 93.184.215.14"}
        assert ("first.example", "NOERROR 0.0.0.0") in answers
        blocked = await resolver.query("www.second.example", source=PUPILS)
        assert blocked.answer[0][0].address == "0.0.0.0"
        assert first_ref() is None  # the old table went with the old snapshot
    finally:
        await service.stop()
        await site.close()
