"""The dashboard's words, one catalogue file per language (`fr.json`, `en.json`): French first.

A catalogue maps a key to a text with `{named}` fields. A key missing from a catalogue is a bug
the tests catch (every key the pages use is in every catalogue), never a blank on a page.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

LANGUAGES = ("fr", "en")
DEFAULT = "fr"
NAMES = {"fr": "Français", "en": "English"}  # each in its own language, for the switch


@functools.cache
def catalogue(language: str) -> dict[str, str]:
    path = Path(__file__).with_name(f"{language}.json")
    return json.loads(path.read_text(encoding="utf-8"))


def choose(*candidates: str | None) -> str:
    """The first candidate that is a language we have, else French."""
    return next((item for item in candidates if item in LANGUAGES), DEFAULT)


def translator(language: str) -> Callable[..., str]:
    words = catalogue(choose(language))

    def translate(key: str, **values: object) -> str:
        text = words[key]
        return text.format(**values) if values else text
    return translate
