"""A Policy back to policy-file YAML, in one canonical form that imports to the same Policy."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

import yaml.nodes
import yaml.resolver

from policies.model import WEEKDAYS, ClassPolicy, Device, Policy, Rules, Window

__all__ = ["export_policy"]

# Plain (unquoted) scalars only for names made of these characters, and only when YAML reads them
# back as the same text (not `on`, `null`, `2027-05-01` or `123`); everything else is quoted.
_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_RESOLVER = yaml.resolver.Resolver()
_STR_TAG = "tag:yaml.org,2002:str"
# JSON strings are YAML double-quoted scalars; YAML also wants these characters escaped.
_NOT_PRINTABLE = re.compile("[\x7f-\x9f\ufeff\ufffe\uffff\ud800-\udfff]")


def export_policy(policy: Policy, *, devices: bool = True) -> str:
    """The policy as a policy file. Devices carry `token_sha256`, never a token. The output is
    canonical: parsing it and exporting again gives the same text. `devices=False` leaves the
    `devices:` section out: the stored policy's text (devices are records of their own)."""
    lines: list[str] = []
    if policy.default_class is not None:
        lines.append(f"default_class: {_scalar(policy.default_class)}")
    if policy.always_allow:
        lines.append(f"always_allow: {_flow(policy.always_allow)}")
    if policy.locked_categories:
        lines.append(f"locked_categories: {_flow(policy.locked_categories)}")
    if not policy.bypass_protection:
        lines.append("bypass_protection: false")
    if policy.exceptions:
        lines.append("exceptions:")
        for holiday in policy.exceptions:
            if holiday.first == holiday.last:
                fields = [f"date: {_quote(holiday.first.isoformat())}"]
            else:
                fields = [f"from: {_quote(holiday.first.isoformat())}",
                          f"to: {_quote(holiday.last.isoformat())}"]
            if holiday.name:
                fields.append(f"name: {_scalar(holiday.name)}")
            lines.append(f"  - {{{', '.join(fields)}}}")
    if policy.classes:
        lines.append("classes:")
        for class_policy in policy.classes.values():
            lines.extend(_class(class_policy))
    if devices and policy.devices:
        lines.append(export_devices(policy.devices.values()).rstrip("\n"))
    if not lines:
        return "{}\n"
    return "\n".join(lines) + "\n"


def _class(class_policy: ClassPolicy) -> list[str]:
    body: list[str] = []
    if class_policy.name:
        body.append(f"name: {_scalar(class_policy.name)}")
    if class_policy.school:
        body.append(f"school: {_scalar(class_policy.school)}")
    if class_policy.networks:
        body.append(f"networks: {_flow(str(network) for network in class_policy.networks)}")
    body.extend(_rules(class_policy.rules, overlay=False))
    if class_policy.screen_time_minutes is not None:
        body.append(f"screen_time: {{daily_minutes: {class_policy.screen_time_minutes}}}")
    if class_policy.home is not None:
        home = _rules(class_policy.home, overlay=True)
        if home:
            body.append("home:")
            body.extend(f"  {line}" for line in home)
        else:
            body.append("home: {}")
    head = f"  {_scalar(class_policy.id)}:"
    if not body:
        return [f"{head} {{}}"]
    return [head, *(f"    {line}" for line in body)]


def _rules(rules: Rules, *, overlay: bool) -> list[str]:
    lines = []
    for key in ("block", "block_services", "allow", "deny", "allow_only"):
        values = getattr(rules, key)
        if values:
            lines.append(f"{key}: {_flow(values)}")
    if rules.safe_search is not None and (overlay or rules.safe_search != "off"):
        lines.append(f"safe_search: {rules.safe_search}")
    if rules.schedule:
        lines.append("schedule:")
        lines.extend(f"  - {_window(window)}" for window in rules.schedule)
    return lines


def _window(window: Window) -> str:
    fields = [f"days: {_days(window.days)}", f"from: {_quote(_clock(window.start))}",
              f"to: {_quote(_clock(window.end))}"]
    if window.block:
        fields.append(f"block: {_flow(window.block)}")
    if window.block_services:
        fields.append(f"block_services: {_flow(window.block_services)}")
    if window.closed:
        fields.append("closed: true")
    if window.school_days_only:
        fields.append("school_days_only: true")
    return f"{{{', '.join(fields)}}}"


def export_devices(devices) -> str:
    """A policy file's `devices:` section for these devices ("" for none)."""
    lines = [f"  {_scalar(device.id)}: {_device(device)}" for device in devices]
    return "devices:\n" + "\n".join(lines) + "\n" if lines else ""


def _device(device: Device) -> str:
    fields = [f"class: {_scalar(device.class_id)}"]
    if device.token_sha256 is not None:
        fields.append(f"token_sha256: {_quote(device.token_sha256)}")
    if device.addresses:
        fields.append(f"addresses: {_flow(str(address) for address in device.addresses)}")
    return f"{{{', '.join(fields)}}}"


def _days(days: frozenset[int]) -> str:
    """`all`, or runs of consecutive days as ranges: `mon-fri`, `mon,wed,sat-sun`."""
    if len(days) == 7:
        return "all"
    parts = []
    ordered = sorted(days)
    start = previous = ordered[0]
    for day in [*ordered[1:], None]:
        if day is not None and day == previous + 1:
            previous = day
            continue
        if start == previous:
            parts.append(WEEKDAYS[start])
        else:
            parts.append(f"{WEEKDAYS[start]}-{WEEKDAYS[previous]}")
        if day is not None:
            start = previous = day
    return ",".join(parts) if len(parts) == 1 else _quote(",".join(parts))


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _flow(values: Iterable[str]) -> str:
    return "[" + ", ".join(_scalar(value) for value in values) + "]"


def _scalar(text: str) -> str:
    if _PLAIN.fullmatch(text) and _RESOLVER.resolve(yaml.nodes.ScalarNode, text,
                                                    (True, False)) == _STR_TAG:
        return text
    return _quote(text)


def _quote(text: str) -> str:
    quoted = json.dumps(text, ensure_ascii=False)
    return _NOT_PRINTABLE.sub(lambda match: f"\\u{ord(match.group()):04x}", quoted)
