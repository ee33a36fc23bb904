"""The root of classguard's exceptions: the CLI and the dashboard each map it in one place."""

from __future__ import annotations


class ClassguardError(Exception):
    """Something classguard refuses or cannot do; the message says what, for a person to read."""


class StartupError(ClassguardError):
    """classguard cannot start with this configuration; the message says why."""

