"""Apple configuration profiles (.mobileconfig) that point a device's DNS at classguard.

A profile holds one DNSSettings payload (com.apple.dnsSettings.managed) with the device's own
DoH URL (its token in the path) or DoT server name (its token as the first label), and
ProhibitDisablement so that the pupil cannot switch it off. Apple applies a DNS settings profile
pushed by an MDM to managed Wi-Fi only, unless the iPad is supervised: filtering at home needs
supervised iPads (docs/deploy.md).
"""

from __future__ import annotations

import plistlib
import uuid

PROFILE_IDENTIFIER = "org.classguard.dns"
NAMESPACE = uuid.UUID("0f5c3a1e-8d0b-4b9a-9d3e-6c1f0e2b7a44")  # stable UUIDs per device


def profile(device_id: str, *, doh_url: str | None = None, dot_server: str | None = None,
            organization: str = "classguard") -> bytes:
    """The profile as XML plist bytes; exactly one of `doh_url` and `dot_server`."""
    if (doh_url is None) == (dot_server is None):
        raise ValueError("a profile needs either a DoH URL or a DoT server name")
    settings = {"DNSProtocol": "HTTPS", "ServerURL": doh_url} if doh_url else \
        {"DNSProtocol": "TLS", "ServerName": dot_server}
    payload_uuid = str(uuid.uuid5(NAMESPACE, f"payload:{device_id}"))
    return plistlib.dumps({
        "PayloadContent": [{
            "PayloadType": "com.apple.dnsSettings.managed",
            "PayloadVersion": 1,
            "PayloadIdentifier": f"{PROFILE_IDENTIFIER}.{device_id}.dnssettings",
            "PayloadUUID": payload_uuid,
            "PayloadDisplayName": "classguard DNS",
            "DNSSettings": settings,
            "ProhibitDisablement": True,
        }],
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{PROFILE_IDENTIFIER}.{device_id}",
        "PayloadUUID": str(uuid.uuid5(NAMESPACE, f"profile:{device_id}")),
        "PayloadDisplayName": f"classguard filtering ({device_id})",
        "PayloadDescription": "Sends this device's DNS to the school's classguard filter, at school and at home.",
        "PayloadOrganization": organization,
        "PayloadRemovalDisallowed": True,
    })
