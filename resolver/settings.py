"""The `dns` section of the configuration: what the DNS path needs to know, with its defaults."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from common.addresses import is_ip


@dataclass(frozen=True, slots=True)
class RateLimit:
    qps: float = 50.0
    burst: int = 100


@dataclass(frozen=True, slots=True)
class DnsSettings:
    listen: tuple[str, ...] = ("127.0.0.1:1053",)  # "H:P" or "[v6]:P"; UDP and TCP on each
    upstreams: tuple[str, ...] = ()  # empty: the nameservers of /etc/resolv.conf
    forward_zones: dict[str, str] = field(default_factory=dict)  # zone -> upstream URL
    block_response: str = "null"  # null | nxdomain | refused | ip:A[,AAAA]
    block_ttl: int = 60
    policy_ttl: int = 60
    unknown_clients: str = "refuse"  # refuse | default
    allow_open: bool = False
    trusted_forwarders: tuple[str, ...] = ()  # networks
    rate_limit: RateLimit | None = None
    upstream_timeout: float = 2.0  # one deadline for a whole upstream exchange, seconds
    upstream_probe_interval: float = 10.0  # an idle group asks `. NS` of upstreams not known up
    cache_size: int = 100_000  # entries
    tcp_idle_timeout: float = 10.0
    tcp_max_connections: int = 1000
    fast_path: bool = True  # answer cache hits and blocks from raw bytes; off only to compare
    upstream_ca_file: str | None = None  # PEM CAs for tls:// and https:// upstreams (default: system)
    # clear: the AD bit of upstream answers is never passed on; trust: passed on to a client that
    # asked with AD or DO (RFC 6840 §5.7), as dnsmasq's proxy-dnssec, for upstreams that validate
    # over a path the admin trusts.
    upstream_ad: str = "clear"


UPSTREAM_SCHEMES = ("udp", "tcp", "tls", "https")


DEFAULT_PORTS = {"udp": 53, "tcp": 53, "tls": 853, "https": 443}  # RFC 1035, RFC 7858, RFC 8484


_HOSTNAME = re.compile(r"(?=.{1,253}$)(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*"
                       r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def parse_upstream(url: str) -> tuple[str, str, int, str | None]:
    """An upstream URL as (scheme, host, port, sni); ValueError with the reason if invalid.

    `udp://H[:P]` and `tcp://H[:P]` (port 53), `tls://H[:P][#SNI]` (port 853; SNI defaults to H
    when H is a name, none for an address), `https://H[:P]/path` (port 443; SNI is H; the caller
    keeps the URL itself for the path). IPv6 hosts in brackets: `udp://[2001:db8::1]:53`.
    """
    if not isinstance(url, str):
        raise ValueError(f"an upstream is a URL like \"udp://9.9.9.9:53\", not {url!r}")
    text = url.strip()
    scheme, sep, _ = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in UPSTREAM_SCHEMES:
        raise ValueError(f"{url!r}: an upstream starts with udp://, tcp://, tls:// or https:// "
                         "(e.g. udp://9.9.9.9:53)")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r}: {exc}") from None
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{url!r}: user names and passwords are not supported in upstream URLs")
    host = parts.hostname or ""
    if not host:
        raise ValueError(f"{url!r}: the upstream has no host")
    if not is_ip(host) and not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{url!r}: {host!r} is neither an IP address nor a host name")
    if "[" in parts.netloc and not is_ip(host):
        raise ValueError(f"{url!r}: {host!r} in brackets is not an IPv6 address")
    if port == 0:
        raise ValueError(f"{url!r}: port 0 is not a server port")
    port = port if port is not None else DEFAULT_PORTS[scheme]
    if is_ip(host):
        host = str(ipaddress.ip_address(host))  # one spelling, so comparisons with listen work
    if scheme == "https":
        if parts.fragment:
            raise ValueError(f"{url!r}: an https upstream takes no #fragment")
        return scheme, host, port, host
    if parts.path not in ("", "/") or parts.query:
        raise ValueError(f"{url!r}: a {scheme} upstream has no path or query; "
                         f"write {scheme}://HOST:PORT")
    if scheme != "tls":
        if parts.fragment:
            raise ValueError(f"{url!r}: #SNI is only for tls:// upstreams")
        return scheme, host, port, None
    sni = parts.fragment.strip().lower().rstrip(".") or (None if is_ip(host) else host)
    if sni is not None and not _HOSTNAME.fullmatch(sni):
        raise ValueError(f"{url!r}: {sni!r} is not a valid TLS server name")
    return scheme, host, port, sni
