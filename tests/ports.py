"""Ports for servers that tests stop and start again on the same port (Redis after an outage,
an upstream that comes up): taken below the kernel's ephemeral range, so that while the server
is down nothing bound to port 0 (another test's socket, an outgoing connection, or a client's
reconnect that connects to itself) can be given that port."""

from __future__ import annotations

import random
import socket
from pathlib import Path


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
