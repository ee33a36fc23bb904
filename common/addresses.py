"""Addresses as classguard reads them: listen addresses, client addresses, proxies' hops."""

from __future__ import annotations

import ipaddress


def parse_listen(text: str) -> tuple[str, int]:
    """`"H:P"` or `"[v6]:P"` (H an IP address, P 0..65535) as (host, port); ValueError if not."""
    if not isinstance(text, str):
        raise ValueError(f"a listen address is text like \"127.0.0.1:1053\", not {text!r}")
    value = text.strip()
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r}: write an IPv6 listen address as [ADDRESS]:PORT, "
                             "e.g. [::1]:1053")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port = value.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text!r}: write a listen address as ADDRESS:PORT, "
                             "e.g. 127.0.0.1:1053")
        if ":" in host:
            raise ValueError(f"{text!r}: put an IPv6 address in brackets, e.g. [{host}]:{port}")
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IP address (listen on an address, "
                             "e.g. 127.0.0.1 or 0.0.0.0)") from None
    return str(ipaddress.ip_address(host)), _port(port, text)


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ValueError(f"{whole!r}: port {text!r} is not a number from 0 to 65535")
    return int(text)


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def client_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A client's address as an IP: a zone (`%eth0`) dropped, an IPv4-mapped IPv6 unwrapped."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def address_in(address: str, networks) -> bool:
    """Whether a client's address is in one of `networks`."""
    ip = client_ip(address)
    return ip is not None and any(ip.version == net.version and ip in net for net in networks)


def forwarded_client(peer: str, forwarded_for: list[str], trusted_proxies) -> str:
    """Who is behind an HTTP request: `peer` itself, unless it is one of `trusted_proxies`; then
    the rightmost `X-Forwarded-For` hop (`forwarded_for`: each header's value) that is not a
    trusted proxy. Hops left of it were written by the client and prove nothing; a hop that is
    not an address ends the walk at the last proxy believed."""
    if not trusted_proxies or not address_in(peer, trusted_proxies):
        return peer
    address = peer
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",")]
    for hop in reversed(hops):
        if client_ip(hop) is None:
            break
        address = hop
        if not address_in(hop, trusted_proxies):
            break
    return address
