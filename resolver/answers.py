"""Building DNS answers: replies, block answers, EDNS finishing and truncation."""

from __future__ import annotations

import socket
import struct

from dnslib import AAAA, CNAME, EDNS0, QTYPE, RCODE, RD, RR, A, DNSBuffer, DNSRecord, EDNSOption

# RFC 6891 §6.2.5 and the DNS flag day 2020: never advertise or send more than this over UDP.
MAX_UDP_PAYLOAD = 1232
# RFC 1035 §2.3.4: the limit for a client that sent no OPT record.
CLASSIC_UDP_PAYLOAD = 512

# RFC 8914 extended error codes.
EDE_OTHER = 0  # RFC 8914 §4.1
EDE_STALE_ANSWER = 3
EDE_BLOCKED = 15
EDE_PROHIBITED = 18
EDE_NO_REACHABLE_AUTHORITY = 22
EDE_NETWORK_ERROR = 23
EDNS_OPTION_EDE = 15

OPT = QTYPE.OPT


def empty_reply(query: DNSRecord, rcode: int = RCODE.NOERROR) -> DNSRecord:
    """A reply to `query` with its question copied back (letter case kept) and no records."""
    reply = DNSRecord(header=query.header.__class__(id=query.header.id, qr=1, ra=1, rd=query.header.rd,
                                                    opcode=query.header.opcode, rcode=rcode))
    reply.header.cd = query.header.cd
    for question in query.questions:
        reply.add_question(question)
    return reply


def copy_reply(reply: DNSRecord, query: DNSRecord) -> DNSRecord:
    """A reply of our own to `query` holding the records of `reply` (shared records, new lists)."""
    copy = empty_reply(query, reply.header.rcode)
    copy.header.ad = reply.header.ad  # set only by an upstream trusted with it (dns.upstream_ad)
    copy.rr, copy.auth = list(reply.rr), list(reply.auth)
    copy.ar = [record for record in reply.ar if record.rtype != OPT]
    return copy


def block_answer(query: DNSRecord, qname: str, qtype: int, block_response: str, ttl: int) -> DNSRecord:
    """SPEC §2.5: the answer a blocked name gets, by query type and `dns.block_response`."""
    asked = query.q.qname
    if qtype in (QTYPE.A, QTYPE.AAAA):
        if block_response == "nxdomain":
            return empty_reply(query, RCODE.NXDOMAIN)
        if block_response == "refused":
            return empty_reply(query, RCODE.REFUSED)
        reply = empty_reply(query)
        address = block_address(block_response, qtype)
        if address is not None:
            rdata = A(address) if qtype == QTYPE.A else AAAA(address)
            reply.add_answer(RR(asked, qtype, ttl=ttl, rdata=rdata))
        return reply
    return empty_reply(query)  # NODATA for every other type


def block_address(block_response: str, qtype: int) -> str | None:
    if block_response == "null":
        return "0.0.0.0" if qtype == QTYPE.A else "::"
    if block_response.startswith("ip:"):
        addresses = block_response[3:].split(",")
        v4 = next((a for a in addresses if ":" not in a), None)
        v6 = next((a for a in addresses if ":" in a), None)
        return v4 if qtype == QTYPE.A else v6  # no address of that family: NODATA
    return None


def rfc8482_answer(query: DNSRecord, ttl: int = 3600) -> DNSRecord:
    """RFC 8482 §4.2: answer ANY with one synthesized HINFO record."""
    reply = empty_reply(query)
    reply.add_answer(RR(query.q.qname, QTYPE.HINFO, ttl=ttl, rdata=RD(b"\x07RFC8482\x00")))
    return reply


def cname_answer(query: DNSRecord, target: str, target_reply: DNSRecord, ttl: int) -> DNSRecord:
    """A rewrite: the asked name as a CNAME to `target`, then the target's own answer records."""
    reply = empty_reply(query, target_reply.header.rcode)
    reply.add_answer(RR(query.q.qname, QTYPE.CNAME, ttl=ttl, rdata=CNAME(target + ".")))
    for record in target_reply.rr:
        reply.add_answer(record)
    return reply


SVCB, HTTPS = 64, 65  # RFC 9460
SVC_IPV4HINT, SVC_IPV6HINT = 4, 6


def svc_hints(rdata: bytes) -> list[str]:
    """The ipv4hint/ipv6hint addresses of an SVCB or HTTPS record's RDATA (RFC 9460 §2.2, §7.3)."""
    try:
        offset = 2  # SvcPriority
        while rdata[offset]:  # TargetName, never compressed
            offset += 1 + rdata[offset]
        offset += 1
        found = []
        while offset + 4 <= len(rdata):
            key, length = struct.unpack_from("!HH", rdata, offset)
            value = rdata[offset + 4:offset + 4 + length]
            offset += 4 + length
            if key == SVC_IPV4HINT:
                found += [socket.inet_ntop(socket.AF_INET, value[i:i + 4]) for i in range(0, len(value) - 3, 4)]
            elif key == SVC_IPV6HINT:
                found += [socket.inet_ntop(socket.AF_INET6, value[i:i + 16]) for i in range(0, len(value) - 15, 16)]
        return found
    except (IndexError, ValueError, struct.error):
        return []  # a malformed record hides nothing we could have found


def answer_addresses(records) -> list[str]:
    """Every address an answer gives a client: A, AAAA, and SVCB/HTTPS hints (answer inspection)."""
    found = []
    for record in records:
        rtype = record.rtype
        if rtype in (QTYPE.A, QTYPE.AAAA):
            found.append(str(record.rdata))
        elif rtype in (SVCB, HTTPS):
            buffer = DNSBuffer()
            record.rdata.pack(buffer)
            found += svc_hints(bytes(buffer.data))
    return found


def cap_ttls(reply: DNSRecord, cap: int) -> None:
    """No record above `cap` seconds; records are replaced, never changed (the cache shares them)."""
    for section in ("rr", "auth", "ar"):
        records = getattr(reply, section)
        setattr(reply, section, [RR(r.rname, r.rtype, r.rclass, min(r.ttl, cap), r.rdata)
                                 if r.rtype != OPT and r.ttl > cap else r for r in records])


def ede_option(code: int, text: str = "") -> EDNSOption:
    return EDNSOption(EDNS_OPTION_EDE, struct.pack("!H", code) + text.encode("utf-8")[:200])


def udp_limit(edns_payload: int | None) -> int:
    if edns_payload is None:
        return CLASSIC_UDP_PAYLOAD
    return max(CLASSIC_UDP_PAYLOAD, min(edns_payload, MAX_UDP_PAYLOAD))


def finish(reply: DNSRecord, edns_payload: int | None, dnssec_ok: bool,
           ede: tuple[int, str] | None, limit: int | None) -> bytes:
    """Pack a reply for one client: OPT only if it sent one, truncated to `limit` (UDP) with TC."""
    reply.ar = [record for record in reply.ar if record.rtype != OPT]
    if edns_payload is not None:
        options = [ede_option(*ede)] if ede else []
        reply.add_ar(EDNS0(udp_len=MAX_UDP_PAYLOAD, flags="do" if dnssec_ok else "", opts=options))
    data = bytes(reply.pack())
    if limit is not None and len(data) > limit:
        # RFC 2181 §9: set TC and send what fits; we send no partial RRsets, only the question and OPT.
        reply.header.tc = 1
        reply.rr, reply.auth = [], []
        reply.ar = [record for record in reply.ar if record.rtype == OPT]
        data = bytes(reply.pack())
    return data
