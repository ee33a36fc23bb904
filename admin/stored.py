"""The stored policy read back: its text parsed and validated like a file."""

from __future__ import annotations

from collections.abc import Collection

from policies.loader import PolicyError, parse_policy
from policies.model import Policy
from policies.yaml_lines import YamlError, parse_yaml
from store.records import StoredPolicy


def parse_stored(stored: StoredPolicy, *, known_categories: Collection[str] | None,
                 known_services: Collection[str] | None, allow_open: bool = False) -> Policy:
    """The stored policy text as a Policy, validated like a file; errors name `stored policy vN`."""
    source = f"stored policy v{stored.version}"
    try:
        data = parse_yaml(stored.text, source)
    except YamlError as exc:
        raise PolicyError([str(exc)]) from None
    return parse_policy(data, source=source, known_categories=known_categories,
                        known_services=known_services, allow_open=allow_open)
