"""Category and service ids in words a teacher reads ("gambling" -> "Jeux d'argent"), and back.

The words come with the data (`fr`/`en` in blocklists/data/categories.yaml and services.yaml), so
a category added there brings its words along. The class form accepts the words as well as the
ids, in either language, written loosely (case, accents and apostrophes do not matter), and on a
word it does not know suggests the nearest one: `jeux` -> "Jeux vidéo (games)".
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Collection, Iterable

from blocklists.bundled import Bundled

_PIECES = re.compile(r"[,;\n]+")  # words may hold spaces ("Jeux d'argent"): items split on these
SUGGEST_CUTOFF = 0.5  # difflib's ratio: "jeux" matches "jeux video" (0.57), not "adulte"


def loose(text: str) -> str:
    """`text` compared loosely: case, accents, apostrophes' shape and extra spaces ignored."""
    decomposed = unicodedata.normalize("NFKD", text.replace("’", "'"))
    bare = "".join(char for char in decomposed if not unicodedata.combining(char))
    return " ".join(bare.casefold().split())


class Words:
    """One kind of name (categories or services): ids to words in a language, and words to ids."""

    def __init__(self, words: dict[str, dict[str, str]]):
        self.words = words  # id -> {language: words}
        self._ids: dict[str, str] = {}
        for name, by_language in words.items():
            for text in (name, *by_language.values()):
                self._ids.setdefault(loose(text), name)

    def word(self, name: str, language: str) -> str:
        """The words for `name` in `language`; the id itself when the data has none."""
        by_language = self.words.get(name) or {}
        return by_language.get(language) or by_language.get("en") or name

    def text(self, names: Iterable[str], language: str) -> str:
        return ", ".join(sorted((self.word(name, language) for name in names), key=loose))

    def id_of(self, text: str) -> str | None:
        return self._ids.get(loose(text))

    def ids(self, text: str) -> list[str]:
        """The ids a form field names, one item per comma (or `;`, or line); an item that is not
        a word as a whole may be ids separated by spaces (`adult gambling`, as before); what is
        known neither way is kept as written, for the policy checker to refuse with its field."""
        found: list[str] = []
        for piece in _PIECES.split(str(text or "")):
            piece = piece.strip()
            if not piece:
                continue
            known = self.id_of(piece)
            if known is not None:
                found.append(known)
                continue
            found.extend(self.id_of(token) or token for token in piece.split())
        return found

    def suggestion(self, text: str, language: str) -> str | None:
        """The nearest known name to `text` as "Jeux vidéo (games)", or None."""
        close = difflib.get_close_matches(loose(text), list(self._ids), n=1, cutoff=SUGGEST_CUTOFF)
        if not close:
            return None
        name = self._ids[close[0]]
        return f"{self.word(name, language)} ({name})"


def categories(bundled: Bundled, known: Collection[str] | None = None) -> Words:
    """Every category a policy may name (the bundled ones and those of configured sources)."""
    words = dict(bundled.category_words)
    for name in known or ():
        words.setdefault(name, {})
    return Words(words)


def services(bundled: Bundled) -> Words:
    return Words({name: {"en": service.name, **service.words}
                  for name, service in bundled.services.items()})
