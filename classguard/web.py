"""The dashboard and the REST API wired to the running service: their typed context.

Loaded only when `dashboard` is configured (aiohttp's server comes with it)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from classguard.metrics import ReadinessProbe, upstream_groups
from dashboard import auth
from dashboard.context import Context, Health, UpstreamHealth, Why
from resolver.chain import Client
from resolver.explain import explain


def dashboard_context(service, *, throttle: auth.Throttle | auth.StoreThrottle | None = None
                      ) -> Context:
    """What the dashboard's handlers work with, taken from a running `Service`."""
    settings = service.config.dashboard or {}
    public_url = str(settings.get("public_url") or "")

    async def health() -> Health:
        probe = ReadinessProbe(service)  # what /readyz says: a Redis away is a note, not a reason
        problem = await probe.store_reason()
        return Health(
            upstreams=[UpstreamHealth(zone, upstream.name, upstream.healthy, upstream.last_error)
                       for zone, group in upstream_groups(service) for upstream in group.upstreams],
            store_kind=type(service.store).__name__, store_problem=problem,
            store_up=probe.store_up, notes=probe.notes(drift=False),
            drift=getattr(service, "drift", None))

    async def why(name: str, class_id: str | None, scope: str, at: float | None,
                  who: str | None = None) -> Why:
        """Through the running server's chain, as a query from the class would go; or from one
        device (by its id, or a tablet's address identified as the server identifies it)."""
        device = service.state.snapshot.policy.devices.get(who) if who else None
        if device is not None:
            verdict = await explain(service.chain, service.state, name, at=at, client=Client(
                device.class_id, device.id, scope, f"device {device.id}"))
        elif who:
            verdict = await explain(service.chain, service.state, name, at=at, client_ip=who)
        else:
            verdict = await explain(service.chain, service.state, name, at=at,
                                    client=Client(class_id, None, scope, "class"))
        decision = verdict.decision
        asker = verdict.client
        return Why(verdict.action, decision is not None and decision.blocked,
                   decision.step if decision else "", decision.rule if decision else "",
                   decision.reason if decision else None, verdict.in_force, verdict.until,
                   asker.class_id if asker is not None else None,
                   asker.matched_by if asker is not None else "",
                   asker.device_id if asker is not None else None)

    return Context(
        store=service.store, commands=service.control.commands, state=service.state,
        state_dir=Path(service.config.state_dir), config=service.config, explain=why,
        secure_cookies=public_url.startswith("https://"), query_log=service.query_log,
        throttle=throttle if throttle is not None else auth.throttle_for(service.store),
        refresh_lists=service.request_list_refresh, refresh_lists_now=service.refresh_lists_now,
        health=health, policy_version=lambda: service.control.policy_version,
        trusted_proxies=tuple(ipaddress.ip_network(network, strict=False)
                              for network in settings.get("trusted_proxies", ())))
