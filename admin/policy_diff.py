"""What a policy import would change, one line a change: classes added, removed and changed key
by key, the settings, the holidays (`exceptions`), the windows (`schedule`) and the devices.

`policy diff FILE`, `policy import --dry-run FILE`, the REST API's 409 and the audit log's entry of
a policy change all say it with these lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from policies.export import export_policy
from policies.model import Device, Policy
from policies.yaml_lines import parse_yaml

AUDIT_LINES = 40  # an audit entry keeps this many lines of a diff, then says how many more
_ITEM_NAMES = {"schedule": "window", "exceptions": "holiday"}


@dataclass(frozen=True, slots=True)
class PolicyDiff:
    lines: list[str] = field(default_factory=list)
    removals: list[str] = field(default_factory=list)  # what needs --force: "class cp-a (3 devices)"

    @property
    def empty(self) -> bool:
        return not self.lines

    def compact(self, limit: int = AUDIT_LINES) -> str:
        """The lines for an audit entry, at most `limit` of them."""
        shown = self.lines[:limit]
        if len(self.lines) > limit:
            shown.append(f"… {len(self.lines) - limit} more changes")
        return "\n".join(shown)


def diff_policies(old: Policy | None, old_devices: Mapping[str, Device], new: Policy,
                  new_devices: Mapping[str, Device] | None) -> PolicyDiff:
    """`new_devices` None: the import keeps the enrolled devices (no `devices:` section)."""
    before = _document(old)
    after = _document(new)
    lines: list[str] = []
    for key in sorted((set(before) | set(after)) - {"classes"}):
        lines.extend(_value_lines(key, before.get(key), after.get(key)))
    old_classes, new_classes = before.get("classes") or {}, after.get("classes") or {}
    counts: dict[str, int] = {}
    for device in old_devices.values():
        counts[device.class_id] = counts.get(device.class_id, 0) + 1
    removals: list[str] = []
    for class_id in old_classes:
        if class_id not in new_classes:
            devices = counts.get(class_id, 0)
            lines.append(f"- class {class_id}" + (f" ({devices} devices)" if devices else ""))
            if devices:
                removals.append(f"class {class_id} ({devices} devices)")
    for class_id, body in new_classes.items():
        if class_id not in old_classes:
            keys = ", ".join(body or {}) or "no keys"
            lines.append(f"+ class {class_id} ({keys})")
    for class_id, body in new_classes.items():
        if class_id in old_classes:
            for key in _keys(old_classes[class_id], body):
                lines.extend(_value_lines(key, (old_classes[class_id] or {}).get(key),
                                          (body or {}).get(key), where=f"class {class_id}: "))
    if new_devices is not None:
        gone = [device_id for device_id in old_devices if device_id not in new_devices]
        for device_id in gone:
            lines.append(f"- device {device_id} (class {old_devices[device_id].class_id})")
        for device_id, device in new_devices.items():
            was = old_devices.get(device_id)
            if was is None:
                lines.append(f"+ device {device_id} (class {device.class_id})")
            elif was.class_id != device.class_id:
                lines.append(f"~ device {device_id}: class {was.class_id} → {device.class_id}")
            elif (was.token_sha256, was.addresses) != (device.token_sha256, device.addresses):
                what = [name for name, a, b in (("token", was.token_sha256, device.token_sha256),
                                                ("addresses", was.addresses, device.addresses))
                        if a != b]
                lines.append(f"~ device {device_id}: {' and '.join(what)} changed")
        if gone:
            shown = ", ".join(gone[:5]) + (f" and {len(gone) - 5} more" if len(gone) > 5 else "")
            removals.append(f"{len(gone)} device{'s' if len(gone) > 1 else ''} ({shown})")
    return PolicyDiff(lines, removals)


def _document(policy: Policy | None) -> dict[str, Any]:
    if policy is None:
        return {}
    return parse_yaml(export_policy(policy, devices=False), "<policy>") or {}


def _keys(old: Any, new: Any) -> list[str]:
    old, new = old or {}, new or {}
    return [*old, *(key for key in new if key not in old)]


def _value_lines(key: str, old: Any, new: Any, where: str = "") -> list[str]:
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):  # home: its own keys
        return [line for inner in _keys(old, new)
                for line in _value_lines(f"{key}.{inner}", old.get(inner), new.get(inner), where)]
    if isinstance(old, list) and isinstance(new, list) or \
            (key.split(".")[-1] in _ITEM_NAMES and (old is None or new is None)):
        old_items, new_items = [_show(item) for item in old or []], [_show(item) for item in new or []]
        item = _ITEM_NAMES.get(key.split(".")[-1])
        if item is None:
            parts = [f"+{value}" for value in new_items if value not in old_items]
            parts += [f"-{value}" for value in old_items if value not in new_items]
            if not parts:  # the same items in another order
                parts = [f"{_show(old)} → {_show(new)}"]
            return [f"~ {where}{key}: {' '.join(parts)}"]
        lines = [f"- {where}{key} {item} {value}" for value in old_items if value not in new_items]
        lines += [f"+ {where}{key} {item} {value}" for value in new_items if value not in old_items]
        return lines or [f"~ {where}{key}: the same {item}s in another order"]
    return [f"~ {where}{key}: {_show(old)} → {_show(new)}"]


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_show(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    return str(value)
