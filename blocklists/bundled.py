"""The data shipped with classguard: safe-search map, bypass names, connectivity checks, services."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from blocklists.names import normalize_domain

DATA_DIR = Path(__file__).resolve().parent / "data"
STARTER_DIR = DATA_DIR / "starter"
WORD_LANGUAGES = ("fr", "en")  # the words categories.yaml and services.yaml give a person, per language


@dataclass(frozen=True, slots=True)
class SafeSearchEngine:
    name: str
    hosts: frozenset[str]
    patterns: tuple[re.Pattern[str], ...]
    strict: str
    moderate: str

    def matches(self, name: str) -> bool:
        return name in self.hosts or any(pattern.match(name) for pattern in self.patterns)


_REGEX_SPECIAL = set(".^$*+?{}[]|()\\")


def literal_prefix(pattern: str) -> str:
    """The text every match of an anchored regex starts with (`^www\\.google\\.(...)` -> `www.google.`)."""
    if not pattern.startswith("^"):
        return ""
    prefix, index = [], 1
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern) and pattern[index + 1] in _REGEX_SPECIAL:
            prefix.append(pattern[index + 1])
            index += 2
            continue
        if char in _REGEX_SPECIAL:
            if char in "*?{" and prefix:  # the last character is optional or repeated
                prefix.pop()
            break
        prefix.append(char)
        index += 1
    return "".join(prefix)


@dataclass(frozen=True, slots=True)
class Service:
    id: str
    name: str
    domains: tuple[str, ...]
    source: str = ""
    updated: str = ""
    words: dict[str, str] = field(default_factory=dict)  # language -> name, where not `name`


@dataclass(frozen=True, slots=True)
class Bundled:
    safe_search: tuple[SafeSearchEngine, ...] = ()
    nxdomain: frozenset[str] = frozenset()  # bypass protection, SPEC §2.3.1
    nodata: frozenset[str] = frozenset()
    connectivity: frozenset[str] = frozenset()
    background: frozenset[str] = frozenset()
    services: dict[str, Service] = field(default_factory=dict)
    categories: dict[str, str] = field(default_factory=dict)  # name -> default usage
    # What a person reads for a category: id -> {language: words} ("gambling" -> "Jeux d'argent").
    category_words: dict[str, dict[str, str]] = field(default_factory=dict)
    # Built by load_bundled from `safe_search`: exact hosts, and (literal prefix, regex, engine).
    safe_hosts: dict[str, SafeSearchEngine] = field(default_factory=dict, repr=False)
    safe_patterns: tuple = field(default=(), repr=False)

    def safe_search_target(self, name: str, mode: str) -> str | None:
        """The enforced host for `name` in `mode`, or None; a dict lookup, then few prefix checks."""
        engine = self.safe_hosts.get(name)
        if engine is None:
            for prefix, pattern, candidate in self.safe_patterns:
                if name.startswith(prefix) and pattern.match(name):
                    engine = candidate
                    break
            else:
                return None
        return engine.strict if mode == "strict" else engine.moderate


def _names_file(path: Path) -> frozenset[str]:
    names = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name = normalize_domain(line)
            if name is None:
                raise ValueError(f"{path}: invalid name {line!r}")
            names.add(name)
    return frozenset(names)


@lru_cache(maxsize=1)
def load_bundled() -> Bundled:
    safe = yaml.safe_load((DATA_DIR / "safesearch.yaml").read_text(encoding="utf-8"))
    engines = tuple(
        SafeSearchEngine(
            name=engine["name"],
            hosts=frozenset(engine.get("hosts") or ()),
            patterns=tuple(re.compile(pattern) for pattern in engine.get("patterns") or ()),
            strict=engine["strict"],
            moderate=engine.get("moderate") or engine["strict"],
        )
        for engine in safe["engines"]
    )
    protection = yaml.safe_load((DATA_DIR / "protection.yaml").read_text(encoding="utf-8"))
    services_data = yaml.safe_load((DATA_DIR / "services.yaml").read_text(encoding="utf-8"))["services"]
    services = {
        service_id: Service(
            id=service_id,
            name=str(entry.get("name", service_id)),
            domains=tuple(entry["domains"]),
            source=str(entry.get("source", "")),
            updated=str(entry.get("updated", "")),
            words={language: str(entry[language]) for language in WORD_LANGUAGES if language in entry},
        )
        for service_id, entry in services_data.items()
    }
    categories_data = yaml.safe_load((DATA_DIR / "categories.yaml").read_text(encoding="utf-8"))["categories"]
    categories = {name: (entry or {}).get("usage", "black") for name, entry in categories_data.items()}
    category_words = {name: {language: str(entry[language]) for language in WORD_LANGUAGES
                             if language in (entry or {})}
                      for name, entry in categories_data.items()}
    for path in STARTER_DIR.glob("*.txt"):
        categories.setdefault(path.stem, "black")
    hosts = {host: engine for engine in reversed(engines) for host in engine.hosts}
    patterns = tuple((literal_prefix(p.pattern), p, engine) for engine in engines for p in engine.patterns)
    return Bundled(
        safe_hosts=hosts,
        safe_patterns=patterns,
        safe_search=engines,
        nxdomain=frozenset(protection.get("nxdomain") or ()),
        nodata=frozenset(protection.get("nodata") or ()),
        connectivity=_names_file(DATA_DIR / "connectivity.txt"),
        background=_names_file(DATA_DIR / "background.txt"),
        services=services,
        categories=categories,
        category_words=category_words,
    )
