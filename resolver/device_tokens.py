"""A device's secret token (SPEC §5): its form, its digest, and the device it names.

Shared by DoH (the URL path) and DoT (the SNI's first label); kept apart from resolver.doh so
that a server without DoH does not load the HTTP server to serve DoT.
"""

from __future__ import annotations

import hashlib
import re

from resolver.state import RuntimeState

TOKEN = re.compile(r"[a-z0-9]{22,63}")  # SPEC §5: a token fits a DNS label (for DoT)


def token_digest(token: str) -> str:
    """The SHA-256 (hex) of a device token: all the store ever keeps of it."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


class DeviceTokens:
    """Token digest -> device, compiled once per policy (the snapshot's policy object)."""

    def __init__(self, state: RuntimeState):
        self.state = state
        self._policy = None
        self._devices: dict[str, object] = {}

    def device(self, token: str):
        policy = self.state.snapshot.policy
        if policy is not self._policy:
            self._devices = {device.token_sha256: device for device in policy.devices.values()
                             if device.token_sha256}
            self._policy = policy
        return self._devices.get(token_digest(token))
