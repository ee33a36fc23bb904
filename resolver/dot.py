"""DNS over TLS (RFC 7858) for tablets away from school: the device token is the SNI's first label.

Android's Private DNS setting takes a host name: `{token}.{dot.hostname}`. The TLS handshake
names it (SNI), so the token identifies the device before the first query. A connection that
names no token is judged by its source address, like plain DNS; an unknown token gets REFUSED
with EDE 18, then the connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

from common.addresses import parse_listen
from common.tokens import TOKEN
from resolver.chain import Client
from resolver.clients import scope_for
from resolver.device_tokens import DeviceTokens
from resolver.server import QueryHandler, TcpListener
from resolver.state import RuntimeState

log = logging.getLogger("classguard.dot")

HANDSHAKE_TIMEOUT = 5.0  # seconds: a stalled handshake never holds a connection slot for long
PENDING_NAMES_LIMIT = 10_000  # SNI of handshakes that never completed, forgotten past this


class DotListener(TcpListener):
    protocol = "dot"

    def __init__(self, handler: QueryHandler, state: RuntimeState, hostname: str, idle_timeout: float = 10.0,
                 max_connections: int = 1000):
        super().__init__(handler, idle_timeout, max_connections, state)
        self.hostname = hostname.lower().rstrip(".")
        self.tokens = DeviceTokens(state)
        self._server_names: dict[int, str | None] = {}
        self.server: asyncio.base_events.Server | None = None

    def tls_context(self, cert: str, key: str) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert, key)
        context.sni_callback = self._remember_server_name
        return context

    def _remember_server_name(self, ssl_object, server_name: str | None, _context) -> None:
        if len(self._server_names) >= PENDING_NAMES_LIMIT:
            self._server_names.clear()
        self._server_names[id(ssl_object)] = server_name

    def connection_client(self, writer: asyncio.StreamWriter, client_ip: str) -> Client | None:
        server_name = self._server_names.pop(id(writer.get_extra_info("ssl_object")), None)
        if not server_name:
            return None
        server_name = server_name.lower().rstrip(".")
        if server_name == self.hostname or not server_name.endswith("." + self.hostname):
            return None  # no token: judged by the source address
        token = server_name[:-len(self.hostname) - 1]
        device = self.tokens.device(token) if TOKEN.fullmatch(token) else None
        if device is None:
            raise PermissionError("unknown device")
        return Client(device.class_id, device.id, scope_for(self.state, client_ip), "dot token")

    async def start(self, listen: str, cert: str, key: str, *, reuse_port: bool = False) -> None:
        host, port = parse_listen(listen)
        self.server = await asyncio.start_server(
            self.serve_connection, host, port, ssl=self.tls_context(cert, key),
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT, reuse_address=True, reuse_port=reuse_port or None)
        bound = self.server.sockets[0].getsockname()
        self.port = bound[1]
        log.info("DoT listening on %s port %d for *.%s", bound[0], bound[1], self.hostname)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
