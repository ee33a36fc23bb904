"""A container health check: asks the resolver's first listen address for `localhost`."""

from __future__ import annotations

import os
import socket
import struct
import sys
from pathlib import Path

from classguard.config import load_config
from common.addresses import parse_listen

LOCALHOST_QUERY_ID = 0x4348


def main() -> int:
    config_path = os.environ.get("CLASSGUARD_CONFIG")
    config = load_config(Path(config_path) if config_path else None)
    host, port = parse_listen(config.dns.listen[0])
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    query = struct.pack("!HHHHHH", LOCALHOST_QUERY_ID, 0x0100, 1, 0, 0, 0) + b"\x09localhost\x00\x00\x01\x00\x01"
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        try:
            sock.sendto(query, (host, port))
            reply = sock.recv(512)
        except OSError as exc:
            print(f"unhealthy: {exc}", file=sys.stderr)
            return 1
    return 0 if reply[:2] == query[:2] else 1


if __name__ == "__main__":
    sys.exit(main())
