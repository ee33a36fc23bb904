"""How an admin operation fails: refused, with the reason said in one line."""

from __future__ import annotations

from common.errors import ClassguardError


class NoAnswer(ClassguardError):
    """The server took a request and did not answer it (it stopped, or took too long): whether the
    change was made is not known from here."""


class ControlError(ClassguardError):
    """A command was refused or could not be carried; the message says why, in one line."""

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class NeedsForce(ControlError):
    """A change that removes data (a class with devices, devices) asked without its confirmation:
    `diff` says everything it would change, one line a change."""

    def __init__(self, message: str, diff: list[str]) -> None:
        super().__init__(message)
        self.diff = diff
