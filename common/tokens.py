"""A device's secret token (SPEC §5): its form, and the digest that is all the store keeps of it.

Checked where a policy is read (policies), made and rotated by the admin operations (admin), and
looked up by DoH and DoT (resolver): one definition for the three."""

from __future__ import annotations

import hashlib
import re

TOKEN = re.compile(r"[a-z0-9]{22,63}")  # SPEC §5: one DNS label (DoT's SNI), 128 bits or more
SHA256 = re.compile(r"[0-9a-f]{64}")  # a token_sha256, as a policy file and the store hold it


def token_sha256(token: str) -> str:
    """The SHA-256 (hex) of a device token: all the store ever keeps of it."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()
