"""The device a secret token names (SPEC §5); its form and digest are in common.tokens.

Shared by DoH (the URL path) and DoT (the SNI's first label); kept apart from resolver.doh so
that a server without DoH does not load the HTTP server to serve DoT.
"""

from __future__ import annotations

from common.tokens import token_sha256
from resolver.state import RuntimeState


class DeviceTokens:
    """Token digest -> device: the running device book's index (updated in place by device
    changes, never rebuilt from the whole policy)."""

    def __init__(self, state: RuntimeState):
        self.state = state

    def device(self, token: str):
        return self.state.snapshot.policy.devices.by_token(token_sha256(token))
