"""Each decision step of SPEC §2.3, seen by a real DNS client through real sockets."""

from __future__ import annotations

import asyncio

import dns.rcode
import dns.rdatatype
import pytest
from aiohttp import web

from blocklists.settings import ListSource
from tests.conftest import POLICY, PUPILS, STAFF, TEST_LISTS, UNKNOWN, ede

POLICY_ALLOWING_CANARY = POLICY.replace("allow: [allowed.gambling.example]",
                                        "allow: [allowed.gambling.example, use-application-dns.net, icloud.com]")

ALLOW_ONLY_POLICY = """\
always_allow: [mdm.example.net]
classes:
  little-ones:
    networks: ["127.0.0.2/32"]
    allow_only: [kids]
"""

KIDS_LIST = ListSource(name="kids", format="domains", category="kids", usage="white", domains=("kids.example",))


@pytest.fixture
async def slow_list_server():
    """A list server that takes its time, so the resolver starts before its lists are ready."""
    release = asyncio.Event()

    async def handler(request):
        await release.wait()
        return web.Response(text="adult.example\n")

    app = web.Application()
    app.router.add_get("/list.txt", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/list.txt"
    release.set()
    await runner.cleanup()


def addresses(message) -> list[str]:
    return [item.to_text() for rrset in message.answer for item in rrset
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)]


async def test_allowed_name_is_forwarded_and_answered(make_resolver):
    resolver = await make_resolver()
    answer = await resolver.query("example.com", use_edns=0)
    assert answer.rcode() == dns.rcode.NOERROR
    assert addresses(answer) == ["93.184.215.14"]
    assert ede(answer) == []


async def test_category_blocks_for_one_class_and_not_the_other(make_resolver):
    resolver = await make_resolver()
    blocked = await resolver.query("www.adult.example", source=PUPILS, use_edns=0)
    assert addresses(blocked) == ["0.0.0.0"]
    assert ede(blocked) == [(15, "category:adult")]
    assert blocked.answer[0].ttl == 60
    open_ = await resolver.query("adult.example", source=STAFF)
    assert addresses(open_) == ["198.51.100.1"]


async def test_unknown_client_is_refused_with_prohibited(make_resolver):
    resolver = await make_resolver()
    answer = await resolver.query("example.com", source=UNKNOWN, use_edns=0)
    assert answer.rcode() == dns.rcode.REFUSED
    assert ede(answer) == [(18, "Prohibited")]


async def test_bypass_protection_fixed_answers_whatever_the_allow_list(make_resolver):
    resolver = await make_resolver(POLICY_ALLOWING_CANARY)
    canary = await resolver.query("use-application-dns.net", use_edns=0)
    assert canary.rcode() == dns.rcode.NXDOMAIN
    relay = await resolver.query("mask.icloud.com", "AAAA")
    assert relay.rcode() == dns.rcode.NXDOMAIN
    ddr = await resolver.query("_dns.resolver.arpa", "SVCB")
    assert ddr.rcode() == dns.rcode.NOERROR and ddr.answer == []


async def test_bypass_protection_can_be_switched_off(make_resolver, upstream):
    upstream.add("use-application-dns.net", "A", "192.0.2.99")
    resolver = await make_resolver("bypass_protection: false\n" + POLICY)
    answer = await resolver.query("use-application-dns.net")
    assert addresses(answer) == ["192.0.2.99"]


async def test_connectivity_checks_resolve_even_for_an_allowlist_only_class(make_resolver, upstream):
    upstream.add("captive.apple.com", "A", "17.253.1.1")
    resolver = await make_resolver(ALLOW_ONLY_POLICY, sources=TEST_LISTS + (KIDS_LIST,))
    answer = await resolver.query("captive.apple.com")
    assert addresses(answer) == ["17.253.1.1"]


async def test_safe_search_rewrites_to_the_enforced_host_with_its_addresses(make_resolver):
    resolver = await make_resolver()
    answer = await resolver.query("www.google.fr", use_edns=0)
    assert answer.rcode() == dns.rcode.NOERROR
    cname = [rrset for rrset in answer.answer if rrset.rdtype == dns.rdatatype.CNAME]
    assert [item.to_text() for item in cname[0]] == ["forcesafesearch.google.com."]
    assert cname[0].name.to_text() == "www.google.fr."
    assert addresses(answer) == ["216.239.38.120"]
    v6 = await resolver.query("www.google.fr", "AAAA")
    assert addresses(v6) == ["2001:4860:4802:32::78"]


async def test_safe_search_off_forwards_the_engine_untouched(make_resolver, upstream):
    upstream.add("www.google.fr", "A", "142.250.1.1")
    resolver = await make_resolver()
    answer = await resolver.query("www.google.fr", source=STAFF)
    assert addresses(answer) == ["142.250.1.1"]
    assert all(rrset.rdtype != dns.rdatatype.CNAME for rrset in answer.answer)


async def test_an_allow_list_cannot_switch_safe_search_off(make_resolver):
    resolver = await make_resolver(POLICY.replace("allow: [allowed.gambling.example]",
                                                  "allow: [allowed.gambling.example, google.fr]"))
    answer = await resolver.query("www.google.fr")
    assert addresses(answer) == ["216.239.38.120"]


async def test_youtube_moderate_uses_restrictmoderate(make_resolver, upstream):
    upstream.add("restrictmoderate.youtube.com", "A", "216.239.38.119")
    resolver = await make_resolver(POLICY.replace("safe_search: strict", "safe_search: moderate"))
    answer = await resolver.query("www.youtube.com")
    assert [item.to_text() for item in answer.answer[0]] == ["restrictmoderate.youtube.com."]
    assert addresses(answer) == ["216.239.38.119"]


async def test_always_allow_opens_infrastructure_for_an_allowlist_only_class(make_resolver):
    resolver = await make_resolver(ALLOW_ONLY_POLICY, sources=TEST_LISTS + (KIDS_LIST,))
    answer = await resolver.query("mdm.example.net")
    assert addresses(answer) == ["192.0.2.10"]


async def test_class_allow_beats_a_blocked_category(make_resolver):
    resolver = await make_resolver()
    assert addresses(await resolver.query("allowed.gambling.example")) == ["198.51.100.3"]
    blocked = await resolver.query("gambling.example", use_edns=0)
    assert ede(blocked) == [(15, "category:gambling")]


async def test_class_deny_blocks_with_reason_deny(make_resolver, upstream):
    upstream.add("www.denied.example", "A", "192.0.2.77")
    resolver = await make_resolver()
    answer = await resolver.query("www.denied.example", use_edns=0)
    assert addresses(answer) == ["0.0.0.0"]
    assert ede(answer) == [(15, "deny")]
    staff = await resolver.query("www.denied.example", source=STAFF)
    assert addresses(staff) == ["192.0.2.77"]


async def test_allow_only_class_blocks_names_outside_its_allowlists(make_resolver, upstream):
    upstream.add("kids.example", "A", "192.0.2.20")
    resolver = await make_resolver(ALLOW_ONLY_POLICY, sources=TEST_LISTS + (KIDS_LIST,))
    assert addresses(await resolver.query("kids.example")) == ["192.0.2.20"]
    outside = await resolver.query("example.com", use_edns=0)
    assert addresses(outside) == ["0.0.0.0"]
    assert ede(outside) == [(15, "not_in_allowlist")]


async def test_blocked_service_blocks_every_domain_of_the_app(make_resolver):
    resolver = await make_resolver(POLICY.replace("block: [adult, gambling]",
                                                  "block: [adult, gambling]\n    block_services: [tiktok]"))
    for name in ("www.tiktok.com", "v16.tiktokcdn.com"):
        answer = await resolver.query(name, use_edns=0)
        assert ede(answer) == [(15, "service:tiktok")], name


async def test_lists_not_loaded_yet_fail_closed(make_resolver, slow_list_server):
    source = ListSource(name="slow", format="domains", category="adult", url=slow_list_server)
    resolver = await make_resolver(sources=(source,), wait_lists=False)
    answer = await resolver.query("example.com", use_edns=0)
    assert addresses(answer) == ["0.0.0.0"]
    assert ede(answer) == [(15, "lists_unavailable")]
    # A class that blocks no category does not depend on the lists.
    assert addresses(await resolver.query("example.com", source=STAFF)) == ["93.184.215.14"]


async def test_cname_into_a_blocked_name_is_blocked(make_resolver):
    resolver = await make_resolver()
    answer = await resolver.query("sneaky.example.org", use_edns=0)
    assert addresses(answer) == ["0.0.0.0"]
    assert ede(answer) == [(15, "category:adult")]
    staff = await resolver.query("sneaky.example.org", source=STAFF)
    assert addresses(staff) == ["198.51.100.4"]


async def test_listed_address_in_an_answer_is_blocked(make_resolver):
    resolver = await make_resolver()
    answer = await resolver.query("listed-address.example.org", use_edns=0)
    assert addresses(answer) == ["0.0.0.0"]
    assert ede(answer) == [(15, "category:adult")]
    # Inspection holds for answers served from the cache too.
    again = await resolver.query("listed-address.example.org", use_edns=0)
    assert addresses(again) == ["0.0.0.0"]
    assert addresses(await resolver.query("listed-address.example.org", source=STAFF)) == ["203.0.113.66"]


@pytest.mark.parametrize("block_response, rcode, a, aaaa", [
    ("null", dns.rcode.NOERROR, ["0.0.0.0"], ["::"]),
    ("nxdomain", dns.rcode.NXDOMAIN, [], []),
    ("refused", dns.rcode.REFUSED, [], []),
    ("ip:192.0.2.80,2001:db8::80", dns.rcode.NOERROR, ["192.0.2.80"], ["2001:db8::80"]),
    ("ip:192.0.2.80", dns.rcode.NOERROR, ["192.0.2.80"], []),
])
async def test_block_response_forms(make_resolver, block_response, rcode, a, aaaa):
    resolver = await make_resolver(block_response=block_response, block_ttl=30)
    answer_a = await resolver.query("adult.example", "A", use_edns=0)
    answer_aaaa = await resolver.query("adult.example", "AAAA", use_edns=0)
    assert answer_a.rcode() == rcode and answer_aaaa.rcode() == rcode
    assert addresses(answer_a) == a and addresses(answer_aaaa) == aaaa
    assert all(rrset.ttl == 30 for rrset in answer_a.answer)
    assert ede(answer_a) == [(15, "category:adult")]


async def test_other_types_get_nodata_and_no_ede_without_edns(make_resolver):
    resolver = await make_resolver()
    answer = await resolver.query("adult.example", "MX", use_edns=0)
    assert answer.rcode() == dns.rcode.NOERROR and answer.answer == []
    assert ede(answer) == [(15, "category:adult")]
    plain = await resolver.query("adult.example", "A", use_edns=False)
    assert addresses(plain) == ["0.0.0.0"]
    assert plain.edns < 0 and ede(plain) == []


async def test_idna_list_entries_match_queries_in_ascii_form(make_resolver, upstream):
    source = ListSource(name="idn", format="domains", category="adult", domains=("école-interdite.example",))
    resolver = await make_resolver(sources=(source,))
    answer = await resolver.query("www.xn--cole-interdite-9jb.example", use_edns=0)
    assert ede(answer) == [(15, "category:adult")]
