"""DNS over HTTPS (RFC 8484): GET and POST at `{path}` and `{path}/{token}`, answered by the QueryHandler.

The token in the path names a device (its SHA-256 is what the policy stores), and so its class;
the scope is `home` unless the request comes from a school address. `{path}` alone is plain DNS
over HTTP: the source address says who asks. HTTPS when the configuration has a `tls` section,
plain HTTP otherwise (behind a reverse proxy, whose `X-Forwarded-For` is believed only from
`doh.trusted_proxies`). The access log never holds a token or a query.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
import re
import ssl
import struct

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from common.addresses import forwarded_client, parse_listen
from common.errors import StartupError
from common.tokens import TOKEN
from resolver.chain import Client, failure
from resolver.clients import scope_for
from resolver.device_tokens import DeviceTokens
from resolver.server import HEADER_SIZE, QueryHandler
from resolver.state import RuntimeState

log = logging.getLogger("classguard.doh")
access_log = logging.getLogger("classguard.doh.access")
http_log = logging.getLogger("classguard.doh.http")  # aiohttp's own errors, made anonymous


class _Anonymous(logging.Filter):
    """aiohttp's error records name the request line (a device token, a queried name in `dns=`)
    or an HTTP/2 preface: each becomes one line with the error's type only (issue 18)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        record.msg = "a malformed or broken HTTP request (%s)"
        record.args = (type(exc).__name__ if exc is not None else "no detail",)
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.INFO, "INFO"
        return True


http_log.addFilter(_Anonymous())

DNS_MESSAGE = "application/dns-message"  # RFC 8484 §6
MAX_MESSAGE = 65535  # a DNS message's largest size (its TCP length prefix is 16 bits)
HANDSHAKE_TIMEOUT = 5.0  # seconds a TLS handshake may take before its descriptor is freed
PER_SOURCE_SHARE = 4  # one address (not a trusted proxy) holds at most 1/4 of max_connections
SHUTDOWN_TIMEOUT = 2.0  # seconds in-flight requests get when the server stops
OPT = 41
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


def decode_dns_param(value: str) -> bytes:
    """RFC 8484 §4.1: the `dns` parameter is base64url without padding (padding is tolerated);
    ValueError when it is not."""
    text = value.rstrip("=")
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None


def min_ttl(wire: bytes) -> int:
    """The smallest TTL of the answer and authority records of a DNS message (a negative answer's
    SOA counts, RFC 2308), read from the bytes; 0 when there is none or the bytes are odd."""
    try:
        qdcount, ancount, nscount = struct.unpack_from("!HHH", wire, 4)
        offset = HEADER_SIZE
        for _ in range(qdcount):
            offset = _skip_name(wire, offset) + 4
        smallest = None
        for _ in range(ancount + nscount):
            offset = _skip_name(wire, offset)
            rtype, _rclass, ttl, length = struct.unpack_from("!HHIH", wire, offset)
            offset += 10 + length
            if rtype != OPT and (smallest is None or ttl < smallest):
                smallest = ttl
        if offset > len(wire):
            return 0
    except (struct.error, IndexError):
        return 0
    return 0 if smallest is None else min(smallest, 0x7FFFFFFF)


def _skip_name(wire: bytes, offset: int) -> int:
    while True:
        length = wire[offset]
        if length == 0:
            return offset + 1
        if length >= 0xC0:  # a compression pointer ends the name
            return offset + 2
        offset += 1 + length


def masked_path(path: str, base: str) -> str:
    """What the access log shows of a request path: the token as `***`, no query string."""
    if path == base:
        return base
    if path.startswith(base + "/"):
        return base + "/***"
    return "/***"  # another path may hold a token too (a misconfigured client)


def access_logger(base: str) -> type[AbstractAccessLogger]:
    class DohAccessLogger(AbstractAccessLogger):
        """`GET /dns-query/*** 200 93 1.2ms`: method, masked path, status, size, time; at
        DEBUG level only (one line a request is one a query, which the README never logs)."""

        @property
        def enabled(self) -> bool:  # aiohttp then skips the call altogether
            return self.logger.isEnabledFor(logging.DEBUG)

        def log(self, request, response, time: float) -> None:
            if not self.logger.isEnabledFor(logging.DEBUG):
                return
            self.logger.debug("%s %s %d %d %.1fms", request.method, masked_path(request.path, base),
                             response.status, response.body_length, time * 1000)

    return DohAccessLogger


def _plain(status: int, text: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", headers=headers or None)


class DohServer:
    """The DoH listener: an aiohttp application on `doh.listen`, over TLS when `tls` is set."""

    def __init__(self, handler: QueryHandler, state: RuntimeState, settings: dict,
                 tls: dict | None = None, max_connections: int | None = None):
        self.handler = handler
        self.state = state
        self.path = settings.get("path", "/dns-query")
        self.listen = settings.get("listen", "127.0.0.1:8053")
        self.trusted_proxies = tuple(ipaddress.ip_network(net, strict=False)
                                     for net in settings.get("trusted_proxies", ()))
        self.tls = tls
        self.ssl_context = self._tls_context() if tls else None  # StartupError when unusable
        self.tokens = DeviceTokens(state)
        self.address: tuple[str, int] | None = None  # bound (host, port) once started
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task | None = None
        # A connection must complete a request within idle_timeout of its opening or of its
        # last answer: that bounds the headers, the body and the keep-alive alike.
        self.idle_timeout = float(settings.get("idle_timeout", 10.0))
        self.max_connections = min(settings.get("max_connections", 1000),
                                   max_connections or 10**6)
        self.max_per_source = max(8, self.max_connections // PER_SOURCE_SHARE)
        self._live: dict[asyncio.BaseTransport, list] = {}  # transport -> [source, deadline]
        self._per_source: dict[str, int] = {}

    @property
    def connections(self) -> int:
        return len(self._live)

    def _trusted_proxy(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted_proxies)

    def _opened(self, transport: asyncio.BaseTransport) -> bool:
        """Count a new connection; False (and it is aborted) past a limit."""
        peer = transport.get_extra_info("peername")
        source = peer[0] if peer else ""
        held = self._per_source.get(source, 0)
        if len(self._live) >= self.max_connections or (
                held >= self.max_per_source and not self._trusted_proxy(source)):
            transport.abort()
            return False
        self._per_source[source] = held + 1
        self._live[transport] = [source, asyncio.get_running_loop().time() + self.idle_timeout]
        return True

    def _closed(self, transport: asyncio.BaseTransport) -> None:
        entry = self._live.pop(transport, None)
        if entry is None:
            return
        source = entry[0]
        if self._per_source.get(source, 0) <= 1:
            self._per_source.pop(source, None)
        else:
            self._per_source[source] -= 1

    async def _sweep(self) -> None:
        """Abort the connections that completed no request in time (slow headers or body,
        idle keep-alive)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, self.idle_timeout / 4))
            now = loop.time()
            for transport, (_source, deadline) in list(self._live.items()):
                if deadline < now:
                    transport.abort()

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        assert self.address is not None, "start() first"
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{host}:{port}{self.path}"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_MESSAGE)
        app.router.add_route("*", self.path, self.serve)
        app.router.add_route("*", self.path + "/{token}", self.serve)
        return app

    async def start(self, *, reuse_port: bool = False) -> None:
        """`reuse_port`: worker processes share the port (serve --workers); the kernel spreads
        the connections."""
        host, port = parse_listen(self.listen)
        runner = web.AppRunner(self.app(), handle_signals=False, access_log=access_log,
                               access_log_class=access_logger(self.path),
                               keepalive_timeout=self.idle_timeout, logger=http_log,
                               shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        loop = asyncio.get_running_loop()
        make_handler = runner.server
        try:
            # Our own listening socket rather than web.TCPSite: every connection is counted
            # (and refused past the limits) before aiohttp sees it.
            self._server = await loop.create_server(
                lambda: _Counted(self, make_handler()), host, port, ssl=self.ssl_context,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT if self.ssl_context else None,
                reuse_address=True, reuse_port=reuse_port or None)
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._sweeper = asyncio.create_task(self._sweep())
        bound = self._server.sockets[0].getsockname()
        self.address = (bound[0], bound[1])
        log.info("DoH listening on %s (%s, path %s)", self.url.rsplit(self.path, 1)[0],
                 "HTTPS" if self.tls else "plain HTTP", self.path)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _tls_context(self) -> ssl.SSLContext:

        cert, key = self.tls.get("cert"), self.tls.get("key")
        if not cert or not key:
            raise StartupError("tls needs both cert: and key: (PEM files) for DoH over HTTPS")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8484 §5: HTTPS with TLS 1.2 or later
        context.set_alpn_protocols(["http/1.1"])
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(f"tls: cannot load the certificate {cert} and key {key}: "
                               f"{exc}") from None
        return context

    # -- one request

    async def serve(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "POST"):
            return _plain(405, "use GET ?dns= or POST application/dns-message", Allow="GET, POST")
        address = self.source_address(request)
        client = None
        token = request.match_info.get("token")
        if token is not None:
            client = self.device_client(token, address)
            if client is None:
                return _plain(403, "unknown device")
        data = await self._message(request)
        if isinstance(data, web.Response):
            return data
        handler = self.handler
        if handler.rate_limiter is not None and not handler.admit(address, "doh", client):
            return _plain(429, "too many queries", **{"Retry-After": "1"})
        try:
            wire = handler.answer_fast(data, address, "doh", client)
            if wire is None:
                wire = await handler.answer(data, address, "doh", client)
        except Exception as exc:  # a bug: the client gets a DNS failure, never an HTTP 500
            log.error("DoH query failed: %s", failure(exc))
            wire = _servfail(data)
        entry = self._live.get(request.transport)
        if entry is not None:  # a request completed: the connection has its time again
            entry[1] = asyncio.get_running_loop().time() + self.idle_timeout
        if wire is None:
            return _plain(400, "not a DNS query")
        return web.Response(body=wire, content_type=DNS_MESSAGE,
                            headers={"Cache-Control": f"max-age={min_ttl(wire)}"})

    async def _message(self, request: web.Request) -> bytes | web.Response:
        """The DNS query of the request, or the error response that says why there is none."""
        if request.method == "GET":
            values = request.query.getall("dns", [])
            if len(values) != 1:
                return _plain(400, "GET needs one dns= parameter (base64url)")
            try:
                data = decode_dns_param(values[0])
            except ValueError:
                return _plain(400, "the dns= parameter is not base64url")
            if len(data) > MAX_MESSAGE:
                return _plain(413, "a DNS message is at most 65535 bytes")
        else:
            if request.content_type != DNS_MESSAGE:
                return _plain(415, f"POST needs Content-Type: {DNS_MESSAGE}")
            if request.content_length is not None and request.content_length > MAX_MESSAGE:
                return _plain(413, "a DNS message is at most 65535 bytes")
            try:
                data = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return _plain(413, "a DNS message is at most 65535 bytes")
            except ConnectionError:  # cut off mid-body (doh.idle_timeout) or gone
                return _plain(400, "incomplete request")
        if len(data) < HEADER_SIZE:
            return _plain(400, "not a DNS query")
        return data

    def device_client(self, token: str, address: str) -> Client | None:
        """The device a token names as a Client, scope `school` when `address` is a school
        address (a class network or a device's address), else `home`; None if unknown."""
        if not TOKEN.fullmatch(token):
            return None
        device = self.tokens.device(token)
        if device is None:
            return None
        return Client(device.class_id, device.id, scope_for(self.state, address), "doh token")

    def source_address(self, request: web.Request) -> str:
        """The peer's address; behind a trusted proxy, the last X-Forwarded-For hop that is not
        one of the trusted proxies."""
        peer = request.transport.get_extra_info("peername") if request.transport else None
        return forwarded_client(peer[0] if peer else "", request.headers.getall("X-Forwarded-For", []),
                                self.trusted_proxies)


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted by the DohServer while it is open."""

    def __init__(self, server: DohServer, inner: asyncio.Protocol):
        self.server = server
        self.inner = inner
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport) -> None:
        if self.server._opened(transport):
            self.transport = transport
            self.inner.connection_made(transport)

    def connection_lost(self, exc) -> None:
        if self.transport is not None:
            self.server._closed(self.transport)
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport is not None:
            self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received() if self.transport is not None else None

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


def _servfail(data: bytes) -> bytes | None:
    if len(data) < HEADER_SIZE:
        return None
    query_id, flags = struct.unpack_from("!HH", data)
    return struct.pack("!HHHHHH", query_id, 0x8000 | (flags & 0x7900) | 0x0080 | 2, 0, 0, 0, 0)
