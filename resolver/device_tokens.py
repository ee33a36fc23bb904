"""The device a secret token names (SPEC §5); its form and digest are in common.tokens.

Shared by DoH (the URL path) and DoT (the SNI's first label); kept apart from resolver.doh so
that a server without DoH does not load the HTTP server to serve DoT.
"""

from __future__ import annotations

from common.tokens import token_sha256
from resolver.state import RuntimeState


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
        return self._devices.get(token_sha256(token))
