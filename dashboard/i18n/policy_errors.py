"""The policy checker's messages (policies/loader.py, written in English for the file's users and
the CLI) in the dashboard user's language, for the ones a class form can produce.

Each entry is the English message's pattern and its French text with the same named parts; a
message that matches none stays as written (tests/test_pages.py checks that every pattern still
matches what the loader says, so a reworded message fails a test instead of going untranslated).
"""

from __future__ import annotations

import re

from dashboard.i18n.words import Words

_FRENCH: list[tuple[str, str]] = [
    (r"networks: invalid network (?P<text>'.*'); write an address with its prefix length, "
     r"e\.g\. 10\.12\.3\.0/24 or 2001:db8:12:3::/64",
     "réseaux : réseau invalide {text} ; écrivez une adresse avec sa longueur de préfixe, par "
     "exemple 10.12.3.0/24 ou 2001:db8:12:3::/64"),
    (r"networks: (?P<text>'.*') has host bits set; did you mean (?P<loose>'.*')\?",
     "réseaux : {text} a des bits d'hôte ; vouliez-vous dire {loose} ?"),
    (r"network (?P<network>\S+) is already in class (?P<owner>'.*') \(line (?P<line>\d+)\); "
     r"a network belongs to one class",
     "le réseau {network} est déjà dans la classe {owner} (ligne {line}) ; un réseau appartient "
     "à une seule classe"),
    (r"invalid class id (?P<shown>'.*'): use 1 to 64 letters, digits, '\.', '_' or '-', "
     r"starting with a letter or digit",
     "identifiant de classe invalide {shown} : de 1 à 64 lettres, chiffres, « . », « _ » ou "
     "« - », en commençant par une lettre ou un chiffre"),
    (r"unknown category (?P<name>'[^']*') \((?:did you mean (?P<close>'[^']*')\? )?"
     r"known: see docs/categories or classguard lists\)",
     "catégorie inconnue {name}{close} (les catégories connues sont listées sous le champ)"),
    (r"unknown service (?P<name>'[^']*') \((?:did you mean (?P<close>'[^']*')\? )?"
     r"known: see docs/services\)",
     "application inconnue {name}{close} (les applications connues sont listées sous le champ)"),
    (r"(?P<key>[a-z_]+): (?P<text>'.*') is not a domain name; write the name only, "
     r"e\.g\. (?P<host>'.*')",
     "{key} : {text} n'est pas un nom de domaine ; écrivez le nom seul, par exemple {host}"),
    (r"(?P<key>[a-z_]+): write (?P<short>'.*') instead of (?P<text>'.*') "
     r"\(an entry always covers its subdomains\)",
     "{key} : écrivez {short} au lieu de {text} (une entrée couvre toujours ses sous-domaines)"),
    (r"(?P<key>[a-z_]+): invalid domain name (?P<text>'.*')",
     "{key} : nom de domaine invalide {text}"),
    (r"(?P<key>[a-z_]+): (?P<text>'.*') is an address; [a-z_]+ takes domain names",
     "{key} : {text} est une adresse IP ; ce champ attend des noms de domaine"),
    (r"(?P<key>[a-z_]+): (?P<text>'.*') is a public suffix \(the names under it belong to "
     r"unrelated owners\); list one domain such as (?P<example>'.*')",
     "{key} : {text} est un suffixe public (les noms en dessous appartiennent à des propriétaires "
     "différents) ; indiquez un seul domaine, comme {example}"),
    (r"(?P<key>[a-z_]+): (?P<text>'.*') is a shared hosting suffix where anyone can publish a "
     r"site; allow one site such as (?P<example>'.*') instead \(blocking the whole suffix with "
     r"deny is allowed\)",
     "{key} : {text} est un hébergement partagé où chacun peut publier un site ; autorisez un "
     "seul site, comme {example} (interdire tout le suffixe reste possible)"),
    (r"daily_minutes must be a whole number of minutes from 1 to 1440, not (?P<value>.*)",
     "le temps d'écran est un nombre entier de minutes de 1 à 1440, pas {value}"),
    (r"the window starts and ends at the same time \((?P<time>.*)\); it would be empty",
     "la plage commence et finit à la même heure ({time}) : elle serait vide"),
    (r"window does nothing: add closed: true, block: \[\.\.\.\] or block_services: \[\.\.\.\]",
     "la plage ne fait rien : cochez « Fermé » ou indiquez des catégories ou des applications "
     "bloquées"),
    (r"a schedule window needs days: \(e\.g\. mon-fri, \[mon, wed\], or all\)",
     "une plage horaire a besoin de jours (par exemple mon-fri, sat,sun ou all)"),
    (r"days: (?P<day>.*) is not a day; use mon(?:, tue, wed, thu, fri, sat, sun|\.\.sun), "
     r"a range like mon-fri, or all",
     "jours : {day} n'est pas un jour ; utilisez mon, tue, wed, thu, fri, sat, sun, un "
     "intervalle comme mon-fri, ou all"),
    (r"a schedule window needs (?P<key>from|to): \(HH:MM, e\.g\. \"08:30\"\)",
     "une plage horaire a besoin d'une heure « {key} » (HH:MM, par exemple 08:30)"),
    (r"(?P<key>from|to): (?P<value>.*) is not a time; write HH:MM from 00:00 to 24:00, "
     r"e\.g\. \"08:30\"",
     "{key} : {value} n'est pas une heure ; écrivez HH:MM de 00:00 à 24:00, par exemple 08:30"),
    (r"from: 24:00 is not a start time; use 00:00 \(the window starts at midnight\)",
     "from : 24:00 n'est pas une heure de début ; écrivez 00:00 (la plage commence à minuit)"),
    (r"safe_search in .* must be off, moderate or strict, not (?P<value>.*)",
     "la recherche sécurisée est off, moderate ou strict, pas {value}"),
]

_COMPILED = [(re.compile(pattern), french) for pattern, french in _FRENCH]
PATTERNS = [pattern for pattern, _french in _COMPILED]  # for the test that they still match


# An unknown category or service: the dashboard's own suggestion, in words (the loader's is an id).
_UNKNOWN = re.compile(r"unknown (?P<kind>category|service) '(?P<name>[^']*)' \(.*\)")
_UNKNOWN_TEXT = {
    ("fr", "category"): "catégorie inconnue « {name} »{close} (les catégories connues sont listées sous le champ)",
    ("fr", "service"): "application inconnue « {name} »{close} (les applications connues sont listées sous le champ)",
    ("en", "category"): "unknown category '{name}'{close} (the known ones are listed under the field)",
    ("en", "service"): "unknown app '{name}'{close} (the known ones are listed under the field)",
}
_CLOSE = {"fr": " : vouliez-vous dire {} ?", "en": ": did you mean {}?"}


def translate(message: str, language: str, words: dict[str, Words] | None = None) -> str:
    """`message` (without its FILE:LINE prefix) in `language`; as written when not known.
    `words` ({"category": ..., "service": ...}): an unknown name gets the nearest one in words."""
    unknown = _UNKNOWN.fullmatch(message)
    if unknown is not None and words is not None:
        kind, name = unknown.group("kind"), unknown.group("name")
        language = language if language in _CLOSE else "en"
        suggestion = words[kind].suggestion(name, language)
        close = _CLOSE[language].format(suggestion) if suggestion else ""
        return _UNKNOWN_TEXT[language, kind].format(name=name, close=close)
    if language != "fr":
        return message
    for pattern, french in _COMPILED:
        found = pattern.fullmatch(message)
        if found is not None:
            parts = {name: value or "" for name, value in found.groupdict().items()}
            if parts.get("close"):
                parts["close"] = f" (vouliez-vous dire {parts['close']} ?)"
            return french.format(**parts)
    return message
