"""Reading and writing DNS messages as raw bytes, for the fast path: no parse, no pack."""

from __future__ import annotations

import struct

HEADER = struct.Struct("!HHHHHH")
U16 = struct.Struct("!H")
U32 = struct.Struct("!I")
OPT_TYPE = 41
ECS_OPTION = 8  # RFC 7871 client subnet: believed only from trusted forwarders, so never fast
PADDING_OPTION = 12  # RFC 7830: a padded query gets a padded answer over TLS, so never fast
PADDING_BLOCK = 468  # RFC 8467 §4.1: responses padded to a multiple of 468 bytes
OUR_PAYLOAD = 1232  # RFC 6891, DNS flag day 2020
QR, RD_BIT, RA, CD_BIT = 0x8000, 0x0100, 0x0080, 0x0010
AD_BIT = 0x20  # in the flags' second byte


class RawQuery:
    """What the fast path needs of a query, read straight from its bytes (all but the id)."""

    __slots__ = ("qname", "question_end", "qtype", "qclass", "rd", "cd", "edns_payload", "dnssec_ok",
                 "reply")

    def __init__(self, qname: bytes, question_end: int, qtype: int, qclass: int, rd: bool, cd: bool,
                 edns_payload: int | None, dnssec_ok: bool):
        self.qname = qname  # wire form, lowercased: the cache and decision key
        self.question_end = question_end  # offset just past QTYPE/QCLASS
        self.qtype = qtype
        self.qclass = qclass
        self.rd = rd
        self.cd = cd
        self.edns_payload = edns_payload  # None: no OPT record
        self.dnssec_ok = dnssec_ok
        # The fast path's last reply to these bytes and what it holds for (FilteringLink), or None.
        self.reply: tuple | None = None

    @property
    def cache_key(self) -> tuple:
        """As resolver.cache keys entries; made per lookup, since most memoised queries (blocked
        names) never need one."""
        return (self.qname, self.qtype, self.qclass, self.dnssec_ok, self.cd)


def read_query(data: bytes) -> RawQuery | None:
    """A plain, well-formed, single-question query; None for anything else (the slow path decides).

    Refused here: responses, other opcodes, counts other than QD=1 AN=0 NS=0 AR<=1, compression
    in the question, dots or non-ASCII bytes inside labels, OPT records that are not alone, not
    version 0, or that carry a client subnet or padding.
    """
    size = len(data)
    if size < 17:
        return None
    query_id, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    if flags & 0xF800 or qdcount != 1 or ancount or nscount or arcount > 1:
        return None  # QR set, an opcode other than QUERY, or sections a query does not have
    offset = 12
    while True:
        length = data[offset] if offset < size else -1
        if length == 0:
            break
        if length < 0 or length > 63 or offset + 1 + length >= size:
            return None  # truncated, or a compression pointer (0xC0) in the question
        label = data[offset + 1:offset + 1 + length]
        if b"." in label or not label.isascii():
            return None
        offset += 1 + length
    name_end = offset + 1
    question_end = name_end + 4
    if question_end > size:
        return None
    qtype, qclass = struct.unpack_from("!HH", data, name_end)
    edns_payload = None
    dnssec_ok = False
    if arcount:
        # An OPT record: root name, TYPE 41, CLASS = payload, TTL = ext-rcode/version/flags.
        if size < question_end + 11 or data[question_end] != 0:
            return None
        rtype, payload, ttl, rdlength = struct.unpack_from("!HHIH", data, question_end + 1)
        if rtype != OPT_TYPE or (ttl >> 16) & 0xFF or question_end + 11 + rdlength != size:
            return None
        options = question_end + 11
        while options < size:
            if options + 4 > size:
                return None
            code, length = struct.unpack_from("!HH", data, options)
            if code == ECS_OPTION or code == PADDING_OPTION:
                return None
            options += 4 + length
        if options != size:
            return None
        edns_payload = payload
        dnssec_ok = bool(ttl & 0x8000)
    elif question_end != size:
        return None
    return RawQuery(data[12:name_end].lower(), question_end, qtype, qclass, bool(flags & RD_BIT),
                    bool(flags & CD_BIT), edns_payload, dnssec_ok)




def skip_name(data: bytes, offset: int) -> int:
    """The offset just past a (possibly compressed) name."""
    while True:
        length = data[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            return offset + 2
        offset += 1 + length


def record_ttl_offsets(wire: bytes) -> list[tuple[int, int]]:
    """(offset, TTL) of every resource record's TTL field in a packed message with one question."""
    _id, _flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(wire)
    offset = 12
    for _ in range(qdcount):
        offset = skip_name(wire, offset) + 4
    found = []
    for _ in range(ancount + nscount + arcount):
        offset = skip_name(wire, offset)
        rtype = U16.unpack_from(wire, offset)[0]
        ttl = U32.unpack_from(wire, offset + 4)[0]
        if rtype != OPT_TYPE:
            found.append((offset + 4, ttl))
        rdlength = U16.unpack_from(wire, offset + 8)[0]
        offset += 10 + rdlength
    return found


def with_options(wire: bytes, options: bytes) -> bytes:
    """A packed message with `options` (EDNS option bytes: code, length, data) added at the end of
    its OPT record's RDATA; the message as it was when it has no OPT record."""
    _id, _flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(wire)
    offset = 12
    for _ in range(qdcount):
        offset = skip_name(wire, offset) + 4
    for _ in range(ancount + nscount + arcount):
        offset = skip_name(wire, offset)
        rtype = U16.unpack_from(wire, offset)[0]
        rdlength = U16.unpack_from(wire, offset + 8)[0]
        end = offset + 10 + rdlength
        if rtype == OPT_TYPE:
            return b"".join((wire[:offset + 8], U16.pack(rdlength + len(options)), wire[offset + 10:end],
                             options, wire[end:]))
        offset = end
    return wire



def padded(wire: bytes) -> bytes:
    """A packed message with an OPT record, padded to a multiple of PADDING_BLOCK (RFC 8467)."""
    size = len(wire) + 4  # the padding option's own code and length
    fill = -size % PADDING_BLOCK
    return with_options(wire, U16.pack(PADDING_OPTION) + U16.pack(fill) + bytes(fill))


def opt_record(dnssec_ok: bool, ede: tuple[int, str] | None = None) -> bytes:
    """Our OPT record exactly as the slow path packs it (root name, payload 1232, EDE option)."""
    options = b""
    if ede is not None:
        text = ede[1].encode("utf-8")[:200]
        options = struct.pack("!HHH", 15, 2 + len(text), ede[0]) + text
    return b"\x00" + struct.pack("!HHIH", OPT_TYPE, OUR_PAYLOAD, 0x8000 if dnssec_ok else 0, len(options)) + options
