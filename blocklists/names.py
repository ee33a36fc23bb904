"""Domain names and IP entries as lists and queries compare them: normalised, validated, walked."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator

try:
    import idna as _idna
except ImportError:  # the stdlib codec below still handles most names
    _idna = None

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_NAME_LENGTH = 253  # RFC 1035 §2.3.4: 255 octets on the wire = 253 characters in text form
MAX_LABEL_LENGTH = 63  # RFC 1035 §2.3.4

# Underscores are allowed because real names use them (_dns.resolver.arpa, SRV owners), and
# hyphens anywhere because blocklists do list names like "ads-.example.com" that resolve.
VALID_ASCII_NAME = re.compile(r"(?:[a-z0-9_-]{1,63}\.)*[a-z0-9_-]{1,63}")


def normalize_domain(text: str) -> str | None:
    """The name in its comparable form (lowercase ASCII, no trailing dot), or None if invalid."""
    name = text.strip().lower()
    if name.endswith("."):
        name = name[:-1]
    if not name.isascii():
        name = _to_ascii(name)
        if name is None:
            return None
    if len(name) > MAX_NAME_LENGTH or not VALID_ASCII_NAME.fullmatch(name):
        return None
    return name


def _to_ascii(name: str) -> str | None:
    """IDNA conversion, label by label so that ASCII labels such as "_dns" survive untouched."""
    if _idna is not None:
        try:
            # The UTS 46 mapping also folds the ideographic full stop "。" into ".".
            name = _idna.uts46_remap(name, std3_rules=False, transitional=False)
        except _idna.IDNAError:
            return None
    labels = []
    for label in name.split("."):
        if label.isascii():
            labels.append(label)
            continue
        encoded = _label_to_ascii(label)
        if encoded is None:
            return None
        labels.append(encoded)
    return ".".join(labels).lower()


def _label_to_ascii(label: str) -> str | None:
    if _idna is not None:
        try:
            return _idna.alabel(label).decode("ascii")
        except (_idna.IDNAError, UnicodeError):
            pass  # IDNA 2008 refuses some names (emoji) that IDNA 2003 and browsers still resolve
    try:
        return label.encode("idna").decode("ascii")
    except UnicodeError:
        return None


def parse_ip_entry(text: str) -> IPNetwork | None:
    """An address or CIDR network list entry as a network (a /32 or /128 for an address)."""
    entry = text.strip()
    # Cheap rejection first: list names far outnumber IP entries on the paths that call this.
    if not entry or not (entry[0].isdigit() or ":" in entry):
        return None
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return None


def parents(name: str) -> Iterator[str]:
    """The name itself, then each enclosing domain up to the top-level one."""
    start = 0
    while True:
        yield name[start:]
        dot = name.find(".", start)
        if dot < 0:
            return
        start = dot + 1


def wire_name_to_text(qname: bytes) -> str:
    """`\\x07example\\x03com\\x00` -> `example.com` (labels already checked by read_query)."""
    labels = []
    offset = 0
    while qname[offset]:
        length = qname[offset]
        labels.append(qname[offset + 1:offset + 1 + length])
        offset += 1 + length
    return b".".join(labels).decode("ascii")
