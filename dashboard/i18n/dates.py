"""Moments and durations as a person reads them, in the school's time zone and the user's
language, by Babel (CLDR's names of days and months, and its plural rules) rather than by
formats written here: "demain 7 h 00", "samedi 5 décembre 2026 à 19 h 42", "il y a 1 jour";
"tomorrow 7:00 AM", "Saturday, December 5, 2026 at 7:42 PM", "1 day ago".
"""

from __future__ import annotations

import datetime as dt
import math
from zoneinfo import ZoneInfo

from babel.dates import format_date, format_time, format_timedelta

# The time of day: French writes "7 h 00" (the Imprimerie nationale's rule, what a school letter
# uses); other languages take CLDR's short time ("7:00 AM").
_TIME = {"fr": "H 'h' mm"}
_DAY = {"fr": "EEEE d MMMM y"}  # "samedi 5 décembre 2026"; CLDR's "full" adds nothing in French
_WEEKDAY = {"fr": "EEEE", "en": "EEEE"}
_RELATIVE = {"fr": ("aujourd'hui", "demain", "hier"), "en": ("today", "tomorrow", "yesterday")}
_AT = {"fr": "{day} à {time}", "en": "{day} at {time}"}


def local(instant: float, timezone: str) -> dt.datetime:
    return dt.datetime.fromtimestamp(instant, ZoneInfo(timezone))


def time_of_day(moment: dt.datetime | dt.time, language: str) -> str:
    return format_time(moment, _TIME.get(language, "short"), locale=language)


def date(day: dt.date, language: str) -> str:
    """A whole date: "samedi 5 décembre 2026"."""
    return format_date(day, _DAY.get(language, "full"), locale=language)


def moment(instant: float, timezone: str, now: float, language: str, *, day: bool = False) -> str:
    """`instant` as a person says it from `now`: "7 h 00" today, "demain 7 h 00", "lundi 7 h 00"
    within the week, else the whole date; `day`: always the whole date (a log, an answer kept)."""
    if math.isinf(instant):
        return "∞"
    when, today = local(instant, timezone), local(now, timezone).date()
    time = time_of_day(when, language)
    if day:
        return _AT.get(language, _AT["en"]).format(day=date(when.date(), language), time=time)
    offset = (when.date() - today).days
    words = _RELATIVE.get(language, _RELATIVE["en"])
    if offset == 0:
        return time
    if offset in (1, -1):
        return f"{words[1] if offset == 1 else words[2]} {time}"
    if 1 < offset < 7:
        return f"{format_date(when, _WEEKDAY.get(language, 'EEEE'), locale=language)} {time}"
    return _AT.get(language, _AT["en"]).format(day=date(when.date(), language), time=time)


def ago(seconds: float, language: str) -> str:
    """"il y a 1 jour", "il y a 3 h", "3 hours ago": Babel's plural rules, not ours."""
    return format_timedelta(dt.timedelta(seconds=-seconds), add_direction=True, locale=language,
                            threshold=1.0)
