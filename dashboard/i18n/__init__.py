"""The dashboard's words, one catalogue file per language (`fr.json`, `en.json`): French first.

A catalogue maps a key to a text with `{named}` fields, or, for a text with a count `n`, to its
forms by CLDR plural category ({"one": "{n} appareil inscrit", "other": "{n} appareils inscrits"}:
French says "0 appareil", English "0 devices"; Babel knows which). A key missing from a catalogue is a bug
the tests catch (every key the pages use is in every catalogue), never a blank on a page.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

from babel import Locale

LANGUAGES = ("fr", "en")
DEFAULT = "fr"
NAMES = {"fr": "Français", "en": "English"}  # each in its own language, for the switch


@functools.cache
def catalogue(language: str) -> dict[str, str | dict[str, str]]:
    path = Path(__file__).with_name(f"{language}.json")
    return json.loads(path.read_text(encoding="utf-8"))


def choose(*candidates: str | None) -> str:
    """The first candidate that is a language we have, else French."""
    return next((item for item in candidates if item in LANGUAGES), DEFAULT)


def translator(language: str) -> Callable[..., str]:
    language = choose(language)
    words = catalogue(language)
    plural_form = Locale(language).plural_form

    def translate(key: str, **values: object) -> str:
        text = words[key]
        if isinstance(text, dict):  # forms by plural category, chosen by the count `n`
            text = text.get(plural_form(abs(values["n"]))) or text["other"]
        return text.format(**values) if values else text
    return translate
