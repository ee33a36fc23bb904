"""HTML that escapes by default: `html(template, *values)` escapes every value unless it is
already `Html`, so text a user typed (a class named `<script>`) always shows as text.

Twenty lines instead of a template engine: the pages are small Python functions, and the one
rule that matters, escape everything that is not markup we built, holds by construction.
"""

from __future__ import annotations

import html as _html
from collections.abc import Iterable
from typing import Any


class Html(str):
    """Markup that is safe as it is: built by `html`, `join` or `escape`."""

    __slots__ = ()


def escape(value: Any) -> Html:
    if isinstance(value, Html):
        return value
    return Html(_html.escape("" if value is None else str(value), quote=True))


def html(template: str, *values: Any, **named: Any) -> Html:
    """`template` is ours (trusted); every value is escaped unless it is `Html` already (numbers
    stay numbers, so that `{:.1f}` works)."""
    return Html(template.format(*(_safe(value) for value in values),
                                **{key: _safe(value) for key, value in named.items()}))


def _safe(value: Any) -> Any:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else escape(value)


def join(parts: Iterable[Any], separator: str = "") -> Html:
    return Html(escape(separator).join(escape(part) for part in parts))
