"""DNS correctness on what real networks send: client subnet, HTTPS/SVCB, no forwarding loop."""

from __future__ import annotations

import dns.asyncquery
import dns.edns
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from classguard.config import Config
from classguard.service import make_upstreams
from common.errors import StartupError
from resolver.settings import DnsSettings
from tests.conftest import PUPILS, STAFF, ede

FORWARDER = "127.0.0.5"


async def ask_with_subnet(resolver, name: str, subnet: str, source: str) -> dns.message.Message:
    query = dns.message.make_query(name, "A", use_edns=0,
                                   options=[dns.edns.ECSOption(subnet, 32)])
    return await dns.asyncquery.udp(query, "127.0.0.1", port=resolver.port, source=source, timeout=3)


async def test_client_subnet_is_believed_only_from_trusted_forwarders(make_resolver, upstream):
    resolver = await make_resolver(trusted_forwarders=("127.0.0.5/32",))
    # A school's forwarder says the question is a pupil's: the pupils' rules apply.
    behind = await ask_with_subnet(resolver, "adult.example", PUPILS, FORWARDER)
    assert [i.to_text() for r in behind.answer for i in r] == ["0.0.0.0"]
    assert ede(behind) == [(15, "category:adult")]
    # Anyone else claiming to speak for a pupil is judged by their own address (staff here).
    spoofed = await ask_with_subnet(resolver, "adult.example", PUPILS, STAFF)
    assert [i.to_text() for r in spoofed.answer for i in r] == ["198.51.100.1"]
    # The forwarder's own address is no class: without a subnet it is refused.
    plain = await resolver.query("example.com", source=FORWARDER, use_edns=0)
    assert plain.rcode() == dns.rcode.REFUSED
    # ECS never goes upstream.
    assert upstream.queries and all(8 not in codes for codes in upstream.options)


async def test_https_address_hints_go_through_answer_inspection(make_resolver, upstream):
    upstream.add("hinted.example.org", "HTTPS", '1 . alpn="h2" ipv4hint=203.0.113.66')
    upstream.add("fine.example.org", "HTTPS", '1 . alpn="h2" ipv4hint=192.0.2.44 ipv6hint=2001:db8::44')
    resolver = await make_resolver()
    for _ in range(2):  # from the upstream, then from the cache
        blocked = await resolver.query("hinted.example.org", "HTTPS", use_edns=0)
        assert blocked.answer == [] and ede(blocked) == [(15, "category:adult")]
    fine = await resolver.query("fine.example.org", "HTTPS")
    assert fine.answer[0].rdtype == dns.rdatatype.HTTPS
    staff = await resolver.query("hinted.example.org", "HTTPS", source=STAFF)
    assert staff.answer and staff.answer[0].rdtype == dns.rdatatype.HTTPS


async def test_https_queries_for_blocked_names_get_nodata_and_safe_search_gets_the_cname(make_resolver, upstream):
    upstream.add("forcesafesearch.google.com", "HTTPS", '1 . alpn="h2,h3"')
    resolver = await make_resolver()
    blocked = await resolver.query("adult.example", "HTTPS", use_edns=0)
    assert blocked.rcode() == dns.rcode.NOERROR and blocked.answer == []
    assert ede(blocked) == [(15, "category:adult")]
    rewritten = await resolver.query("www.google.com", "HTTPS")
    types = [rrset.rdtype for rrset in rewritten.answer]
    assert types == [dns.rdatatype.CNAME, dns.rdatatype.HTTPS]
    assert rewritten.answer[0][0].to_text() == "forcesafesearch.google.com."


def test_classguard_never_forwards_to_its_own_listen_address():
    config = Config(dns=DnsSettings(listen=("127.0.0.1:1053",),
                                    upstreams=("udp://127.0.0.1:1053", "udp://127.0.0.1:5300")))
    group, _zones = make_upstreams(config)
    assert [u.name for u in group.upstreams] == ["udp://127.0.0.1:5300"]
    alone = Config(dns=DnsSettings(listen=("0.0.0.0:53",), upstreams=("udp://127.0.0.1:53",)))
    with pytest.raises(StartupError, match="no usable upstream"):
        make_upstreams(alone)


def echoed_subnet(reply: dns.message.Message) -> list[tuple[str, int, int]]:
    return [(option.address, option.srclen, option.scopelen) for option in reply.options
            if option.otype == dns.edns.ECS]


async def test_client_subnet_is_echoed_to_a_trusted_forwarder(make_resolver, upstream):
    # RFC 7871 §7.2: a forwarder (unbound's send-client-subnet) that gets no option back takes
    # its ECS as ignored, asks again without it, and would get its own class for everyone.
    resolver = await make_resolver(trusted_forwarders=(f"{FORWARDER}/32",))
    for name in ("adult.example", "example.com", "example.com"):  # blocked, upstream, cached
        behind = await ask_with_subnet(resolver, name, PUPILS, FORWARDER)
        assert echoed_subnet(behind) == [(PUPILS, 32, 32)], name
    assert [i.to_text() for r in behind.answer for i in r] == ["93.184.215.14"]
    over_tcp = await dns.asyncquery.tcp(
        dns.message.make_query("example.com", "A", use_edns=0, options=[dns.edns.ECSOption(PUPILS, 32)]),
        "127.0.0.1", port=resolver.port, source=FORWARDER, timeout=3)  # a forwarder's TCP retry
    assert echoed_subnet(over_tcp) == [(PUPILS, 32, 32)]
    # Anyone else's ECS is not used, so not echoed.
    spoofed = await ask_with_subnet(resolver, "example.com", PUPILS, STAFF)
    assert echoed_subnet(spoofed) == []


async def test_a_source_prefix_of_zero_means_the_forwarders_own_address(make_resolver, upstream):
    # stubby's edns_client_subnet_private, passed on by dnsmasq: "do not use my address".
    resolver = await make_resolver(trusted_forwarders=(f"{STAFF}/32",))
    query = dns.message.make_query("adult.example", "A", use_edns=0,
                                   options=[dns.edns.ECSOption("0.0.0.0", 0)])
    reply = await dns.asyncquery.udp(query, "127.0.0.1", port=resolver.port, source=STAFF, timeout=3)
    assert reply.rcode() == dns.rcode.NOERROR, ede(reply)
    assert [i.to_text() for r in reply.answer for i in r] == ["198.51.100.1"]  # the staff's rules
    assert echoed_subnet(reply) == [("0.0.0.0", 0, 0)]
