"""Each decision step of SPEC §2.3, seen by a real DNS client through real sockets."""

from __future__ import annotations

import dns.rcode
import dns.rdatatype

from tests.conftest import PUPILS, STAFF, UNKNOWN, ede


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
