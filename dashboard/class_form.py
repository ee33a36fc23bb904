"""The class form: its fields to a policy-file mapping and back, and the policy loader's errors
put next to the field they are about. The form validates nothing itself: the mapping goes through
the same `policy.put` as a policy file, and its messages are shown as they are."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dashboard.i18n.words import Words
from policies.model import SAFE_SEARCH_MODES

LIST_KEYS = ("block", "block_services", "allow", "deny", "allow_only")
WINDOW_LIST_KEYS = ("block", "block_services")
EMPTY_ROWS = 2  # blank schedule rows offered under the class's windows (no JavaScript to add one)
_SPLIT = re.compile(r"[\s,;]+")


def split(text: Any) -> list[str]:
    return [part for part in _SPLIT.split(str(text or "").strip()) if part]


@dataclass(frozen=True)
class Names:
    """The words of the list fields that name categories or services, in the user's language: the
    form shows them ("Jeux d'argent") and takes them back as ids ("gambling")."""

    categories: Words
    services: Words
    language: str

    def words_of(self, key: str) -> Words | None:
        return {"block": self.categories, "allow_only": self.categories,
                "block_services": self.services}.get(key)


def _items(key: str, text: Any, names: Names | None) -> list[str]:
    words = names.words_of(key) if names is not None else None
    return words.ids(str(text or "")) if words is not None else split(text)


def _shown(key: str, items: Any, names: Names | None) -> str:
    words = names.words_of(key) if names is not None else None
    return ", ".join(words.word(str(item), names.language) if words is not None else str(item)
                     for item in items)


def mapping_from_form(form: Mapping[str, Any], names: Names | None = None) -> dict[str, Any]:
    """The class as the policy file writes it, from the submitted fields (empty ones left out);
    with `names`, categories and services may be written in words."""
    body: dict[str, Any] = {}
    home: dict[str, Any] = {}
    for key in ("name", "school"):
        text = str(form.get(key, "")).strip()
        if text:
            body[key] = text
    networks = split(form.get("networks"))
    if networks:
        body["networks"] = networks
    for target, prefix in ((body, ""), (home, "home.")):
        for key in LIST_KEYS:
            items = _items(key, form.get(prefix + key), names)
            if items:
                target[key] = items
        mode = str(form.get(prefix + "safe_search", ""))
        if mode:
            target["safe_search"] = mode  # anything else than the three is the loader's to refuse
    minutes = str(form.get("screen_time", "")).strip()
    if minutes:
        body["screen_time"] = {"daily_minutes": int(minutes) if minutes.isdigit() else minutes}
    for index in sorted(_row_indexes(form)):
        window = _window(form, f"schedule-{index}-", names)
        if window is not None:
            place = home if form.get(f"schedule-{index}-where") == "home" else body
            place.setdefault("schedule", []).append(window)
    if home:
        body["home"] = home
    return body


def _row_indexes(form: Mapping[str, Any]) -> set[int]:
    found = set()
    for key in form:
        match = re.fullmatch(r"schedule-(\d{1,3})-\w+", key)
        if match:
            found.add(int(match.group(1)))
    return found


# French day names a teacher writes ("lun-ven", "samedi, dimanche", "tous") as the policy's days.
_FRENCH_DAYS = {"lun": "mon", "lundi": "mon", "mar": "tue", "mardi": "tue", "mer": "wed",
                "mercredi": "wed", "jeu": "thu", "jeudi": "thu", "ven": "fri", "vendredi": "fri",
                "sam": "sat", "samedi": "sat", "dim": "sun", "dimanche": "sun", "tous": "all",
                "tout": "all", "tlj": "all"}
_DAY_WORD = re.compile(r"[^\W\d_]+")


def policy_days(text: str) -> str:
    """`lun-ven` -> `mon-fri`: French day names (with or without accents or a final period) as
    the policy file writes days; English ones and anything else left for the checker."""
    return _DAY_WORD.sub(lambda found: _FRENCH_DAYS.get(found.group(0).casefold(), found.group(0)),
                         text)


def _window(form: Mapping[str, Any], prefix: str, names: Names | None = None) -> dict[str, Any] | None:
    days, start, end = (str(form.get(prefix + key, "")).strip() for key in ("days", "from", "to"))
    days = policy_days(days)
    lists = {key: _items(key, form.get(prefix + key), names) for key in WINDOW_LIST_KEYS}
    closed, school_days = bool(form.get(prefix + "closed")), bool(form.get(prefix + "school_days_only"))
    if not (days or start or end or any(lists.values()) or closed):
        return None  # a blank row
    window: dict[str, Any] = {"days": days or "all", "from": start, "to": end}
    window.update({key: items for key, items in lists.items() if items})
    if closed:
        window["closed"] = True
    if school_days:
        window["school_days_only"] = True
    return window


def form_from_mapping(body: Mapping[str, Any], names: Names | None = None) -> dict[str, str]:
    """The form's field values for a class mapping (what GET /api/v1/classes/{id} gives); with
    `names`, categories and services in words."""
    values: dict[str, str] = {}
    for key in ("name", "school"):
        values[key] = str(body.get(key, ""))
    values["networks"] = "\n".join(str(item) for item in body.get("networks", ()))
    home = body.get("home") or {}
    for source, prefix in ((body, ""), (home, "home.")):
        for key in LIST_KEYS:
            values[prefix + key] = _shown(key, source.get(key, ()), names)
        values[prefix + "safe_search"] = str(source.get("safe_search", ""))
    screen_time = body.get("screen_time") or {}
    values["screen_time"] = str(screen_time.get("daily_minutes", ""))
    rows = [(window, "") for window in body.get("schedule", ())] + \
        [(window, "home") for window in home.get("schedule", ())]
    for index, (window, where) in enumerate(rows):
        days = window.get("days", "")
        values[f"schedule-{index}-days"] = ",".join(days) if isinstance(days, list) else str(days)
        values[f"schedule-{index}-from"] = str(window.get("from", ""))
        values[f"schedule-{index}-to"] = str(window.get("to", ""))
        for key in WINDOW_LIST_KEYS:
            values[f"schedule-{index}-{key}"] = _shown(key, window.get(key, ()), names)
        values[f"schedule-{index}-closed"] = "on" if window.get("closed") else ""
        values[f"schedule-{index}-school_days_only"] = "on" if window.get("school_days_only") else ""
        values[f"schedule-{index}-where"] = where
    return values


def row_count(values: Mapping[str, Any]) -> int:
    """Schedule rows to show: the filled ones and EMPTY_ROWS blank ones."""
    filled = [index for index in _row_indexes(values)
              if _window(values, f"schedule-{index}-") is not None]
    return (max(filled) + 1 if filled else 0) + EMPTY_ROWS


# --- the loader's messages, by field ---------------------------------------------------------------

_LINE = re.compile(r"^[^\n]*?:(\d+): ")
_KEY = re.compile(r'^( *)"((?:[^"\\]|\\.)*)":')


def key_path(line_number: int, text: str) -> list[str]:
    """The JSON keys (written with indent=1) enclosing `line_number`, outermost first."""
    lines = text.splitlines()
    if not 1 <= line_number <= len(lines):
        return []
    path: list[str] = []
    depth = len(lines[line_number - 1]) - len(lines[line_number - 1].lstrip(" ")) + 1
    for line in reversed(lines[:line_number]):
        match = _KEY.match(line)
        if match and len(match.group(1)) < depth:
            path.insert(0, match.group(2))
            depth = len(match.group(1))
    return path


def field_of(path: list[str]) -> str:
    """The form field a key path under classes.<id> belongs to ("" when none)."""
    if len(path) < 2 or path[0] != "classes":
        return ""
    if len(path) == 2:
        return "id"
    key = path[2]
    if key == "home" and len(path) > 3:
        return "schedule" if path[3] == "schedule" else "home." + path[3]
    return key


def errors_by_field(errors: list[str], text: str | None) -> dict[str, list[str]]:
    """{field: [message without its `SOURCE:LINE: ` prefix]}; "" holds what no field owns."""
    found: dict[str, list[str]] = {}
    for message in errors:
        match = _LINE.match(message)
        field = ""
        if match is not None and text is not None:
            field = field_of(key_path(int(match.group(1)), text))
            message = message[match.end():]
        found.setdefault(field, []).append(message)
    return found


SAFE_SEARCH_CHOICES = ("", *SAFE_SEARCH_MODES)
