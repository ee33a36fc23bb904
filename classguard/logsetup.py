"""Logging: one line per event, as text or JSON, and the startup configuration with secrets masked."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from classguard.config import LOGGING_DEFAULTS, Config
from privacy.querylog import QUERY_LOG_DEFAULTS

MASK = "***"
# A key whose name says it holds a secret: its value is never logged.
SECRET_KEY = re.compile(r"(token|password|passwd|secret|key|credential|cookie|auth)", re.I)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else was passed with `extra=` and goes into JSON.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class OneLineFormatter(logging.Formatter):
    """The text format, with line breaks (a traceback, a multi-line message) written as `\\n`,
    so that one event is one line for grep, journald and log shippers."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\r", "").replace("\n", "\\n")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, the `extra=` fields
    and the exception, if any."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                event[key] = value
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, ensure_ascii=False, default=str)


class RepeatFilter(logging.Filter):
    """Warnings and errors that repeat (the same logger and message template) are written once
    per `interval` seconds; the next one written says how many were left out (issue 18: one
    query a second must not write a line a second)."""

    def __init__(self, interval: float = 10.0, limit: int = 4096) -> None:
        super().__init__()
        self.interval = interval
        self.limit = limit
        self._seen: dict[tuple, list] = {}  # (logger, template) -> [next allowed time, left out]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg))
        seen = self._seen.get(key)
        if seen is not None and record.created < seen[0]:
            seen[1] += 1
            return False
        if len(self._seen) >= self.limit:
            self._seen.clear()
        left_out = seen[1] if seen is not None else 0
        self._seen[key] = [record.created + self.interval, 0]
        if left_out:
            record.msg = f"{record.msg} (and {left_out} more like it in the last {self.interval:g} s)"
        return True


def configure(config: Config | None = None, level: str | None = None, fmt: str | None = None,
              stream: TextIO | None = None) -> None:
    """The root logger for `classguard serve`: the command line's --log-level and --log-format
    win over the config's `logging` section, which wins over the defaults (text, info)."""
    section = {**LOGGING_DEFAULTS, **((config.logging if config is not None else None) or {})}
    level = (level or section["level"]).upper()
    fmt = fmt or section["format"]
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else OneLineFormatter())
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level))
    # aiohttp's access log would be a line per request (and per scrape): never by default.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


# --- the configuration, as logged once at startup ------------------------------------------------


def masked_config(config: Config) -> dict[str, Any]:
    """The resolved configuration as plain data, every secret replaced by ***; sections whose
    absence means their defaults (query_log, logging) show those defaults."""
    plain = _plain(config)
    plain["query_log"] = plain.get("query_log") or dict(QUERY_LOG_DEFAULTS)
    plain["logging"] = plain.get("logging") or dict(LOGGING_DEFAULTS)
    return _mask(plain, "")


def config_summary(config: Config) -> str:
    """One line: `key=value` for every resolved setting, nested keys dotted, secrets masked."""
    flat: list[str] = []
    _flatten(masked_config(config), "", flat)
    return " ".join(flat)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _mask(value: Any, key: str) -> Any:
    if isinstance(value, dict):
        return {name: _mask(item, name) for name, item in value.items()}
    if isinstance(value, list):
        return [_mask(item, key) for item in value]
    if value is None or isinstance(value, bool):
        return value
    if SECRET_KEY.search(key):
        return MASK
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    return value


def mask_url(url: str) -> str:
    """The URL with its password and any secret-looking query value replaced by ***."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            user = parts.username or ""
            netloc = f"{user}:{MASK}@{netloc.rpartition('@')[2]}"
        elif parts.username is not None and parts.scheme.startswith("redis"):
            netloc = f"{MASK}@{netloc.rpartition('@')[2]}"  # redis://PASSWORD@host: a password
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(name, MASK if SECRET_KEY.search(name) else item)
                               for name, item in pairs], safe="*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return MASK  # unparseable: it may hold anything


def _flatten(value: Any, prefix: str, out: list[str]) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else key, out)
        return
    if isinstance(value, list) and value and any(isinstance(item, dict) for item in value):
        for index, item in enumerate(value):
            _flatten(item, f"{prefix}[{index}]", out)
        return
    out.append(f"{prefix}={json.dumps(value, ensure_ascii=False, separators=(',', ':'))}")
