"""Free ports on 127.0.0.1 for the servers tests start.

`reusable_port` is for a server a test stops and starts again on the same port (Redis after an
outage, an upstream that comes up): taken below the kernel's ephemeral range, so that while the
server is down nothing bound to port 0 (another test's socket, an outgoing connection, or a
client's reconnect that connects to itself) can be given that port."""

from __future__ import annotations

import random
import socket
from pathlib import Path


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port the kernel picks (TCP by default; `socket.SOCK_DGRAM` for UDP)."""
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def reusable_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1, below the ephemeral range."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(max(1024, low - 12000), low), 200):
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
                    socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                udp.bind(("127.0.0.1", port))
                tcp.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port below the ephemeral range")
