"""The configuration file: its sections as typed settings, each with its documented default."""

from __future__ import annotations

import difflib
import os
import ipaddress
import re
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Mapping
from urllib.parse import urlsplit

from blocklists.names import normalize_domain
from blocklists.settings import LIST_FORMATS, BlocklistSettings, ListSource
from common.addresses import parse_listen
from common.errors import ClassguardError
from policies.yaml_lines import LineDict, YamlError
from policies.yaml_lines import describe_value as _describe
from policies.yaml_lines import item_line, key_line, load_yaml
from privacy.querylog import QUERY_LOG_DEFAULTS
from resolver.settings import DnsSettings, RateLimit, parse_upstream


@dataclass(frozen=True, slots=True)
class Config:
    path: Path | None = None  # None: the embedded defaults
    timezone: str = "UTC"
    store: str = "embedded"
    state_dir: Path = Path("./classguard-state")
    policies: Path | None = None  # None: the bundled example policy
    dns: DnsSettings = field(default_factory=DnsSettings)
    blocklists: BlocklistSettings = field(default_factory=BlocklistSettings)
    # Sections that later work fills in; kept as plain mappings until then.
    doh: dict | None = None
    dot: dict | None = None
    tls: dict | None = None
    dashboard: dict | None = None
    metrics: dict | None = None  # {"listen": "IP:PORT"} (validated)
    query_log: dict | None = None  # {"mode", "retention_days", "scope"}; None: QUERY_LOG_DEFAULTS
    logging: dict | None = None  # {"format": text | json, "level": ...}; None: LOGGING_DEFAULTS


# --- loading ----------------------------------------------------------------------------------

DEFAULT_CONFIG_FILE = Path("classguard.yaml")  # looked for in the current folder

# The keys of each section, how each value is checked and the JSON Schema describing it: the
# tables at the end of this module (TOP, DNS, ...), read by the parser and by `json_schema()`.
SECTIONS = ("doh", "dot", "tls", "dashboard", "metrics", "query_log", "logging")
# The optional sections once read (plain mappings, every key filled in): docs/configuration.md.
DOH_DEFAULTS = {"listen": "127.0.0.1:8053", "path": "/dns-query", "public_url": None,
                "trusted_proxies": (), "max_connections": 1000, "idle_timeout": 10.0}
DOT_DEFAULTS = {"listen": "127.0.0.1:8853", "hostname": None}
DASHBOARD_DEFAULTS = {"listen": "127.0.0.1:8080", "public_url": None, "trusted_proxies": ()}
LOGGING_DEFAULTS = {"format": "text", "level": "info"}
ENV_PREFIX = "CLASSGUARD_"
_ENV_LINE = 10**9  # errors in values from the environment sort after the file's, named by variable

STORE_SCHEMES = ("redis", "rediss", "redis+sentinel")
MAX_TTL = 86400

_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


class ConfigError(ClassguardError):
    """The configuration file has mistakes; `errors` holds one `FILE:LINE: message` each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def load_config(path: Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """The configuration in `path`; None: ./classguard.yaml when present, else the defaults.

    `environ` (the process's environment when None) may override the keys a container sets:
    CLASSGUARD_STORE, CLASSGUARD_DNS_LISTEN, ... (`ENVIRONMENT`), each also as NAME_FILE, whose
    value is read from that file (a secret mounted by Docker or systemd)."""
    environ = os.environ if environ is None else environ
    if path is None and DEFAULT_CONFIG_FILE.is_file():
        path = DEFAULT_CONFIG_FILE
    data: Any = None
    if path is not None:
        path = Path(path)
        try:
            data, _ = load_yaml(path)
        except YamlError as exc:
            raise ConfigError([str(exc)]) from None
    overrides = environment_overrides(environ)
    if path is None and not overrides:
        return Config()
    return parse_config(data, path=path, overrides=overrides)


def environment_overrides(environ: Mapping[str, str]) -> dict[str, tuple[tuple[str, ...], Any]]:
    """{variable: (key path, value)} for each CLASSGUARD_... override set in `environ` (a NAME_FILE
    read from its file; both set, or a file that cannot be read: ConfigError, value not shown)."""
    found, errors = {}, []
    for name, keys in ENVIRONMENT.items():
        given, from_file = environ.get(name), environ.get(name + "_FILE")
        if given is not None and from_file is not None:
            errors.append(f"environment: set {name} or {name}_FILE, not both")
            continue
        if from_file is not None:
            try:
                given = Path(from_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                errors.append(f"environment: {name}_FILE: cannot read {from_file}: "
                              f"{exc.strerror or exc}")
                continue
            name += "_FILE"
        if given is None:
            continue
        key = _key_at(keys)
        value: Any = given.strip()
        if key.many:
            value = [part.strip() for part in value.split(",") if part.strip()]
        found[name] = (keys, value)
    if errors:
        raise ConfigError(errors)
    return found


def _key_at(keys: tuple[str, ...]) -> Key:
    table = TOP
    for name in keys[:-1]:
        table = table[name].fields
    return table[keys[-1]]


def _with_overrides(data: Any, overrides: dict) -> tuple[Any, dict[int, str]]:
    """A copy of the loaded data with the environment's values in place; each such key gets a
    line number of its own (from _ENV_LINE) so that an error in it names its variable."""
    top = _copy_mapping(data if isinstance(data, dict) else {})
    if data is not None and not isinstance(data, dict):
        return data, {}  # "the configuration must be a mapping" is said for the file
    names = {}
    for index, (name, (keys, value)) in enumerate(overrides.items()):
        line = _ENV_LINE + index
        names[line] = name
        mapping = top
        for section in keys[:-1]:
            inner = mapping.get(section)
            inner = _copy_mapping(inner if isinstance(inner, dict) else {})
            if section not in mapping or not isinstance(mapping.get(section), dict):
                inner.line = line
                mapping.key_lines[section] = line
            mapping[section] = inner
            mapping = inner
        mapping[keys[-1]] = value
        mapping.key_lines[keys[-1]] = line
    return top, names


def _copy_mapping(mapping: dict) -> LineDict:
    copy = LineDict(mapping)
    copy.line = getattr(mapping, "line", 0)
    copy.key_lines = dict(getattr(mapping, "key_lines", {}))
    return copy


def parse_config(data: Any, *, path: Path | None,
                 overrides: dict[str, tuple[tuple[str, ...], Any]] | None = None) -> Config:
    """Validate already-loaded configuration data; relative paths are taken from path's folder
    (the current folder when there is no file). `overrides`: from `environment_overrides`."""
    names: dict[int, str] = {}
    if overrides:
        data, names = _with_overrides(data, overrides)
    parser = _ConfigParser(path)
    config = parser.config(data)
    if parser.errors:
        ordered = sorted(parser.errors, key=lambda error: error[0])  # file order, then variables
        raise ConfigError([f"{names[line]} (environment): {message}" if line in names
                           else f"{path}:{line}: {message}" for line, message in ordered])
    return config


def parse_duration(value: Any) -> float:
    """Seconds from `90`, `90s`, `30m`, `24h`, `1d`, `1h30m` or `500ms`; ValueError if invalid."""
    if isinstance(value, bool):
        raise ValueError(f"{value} is not a duration")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and value.strip().replace(".", "", 1).isdigit():
        seconds = float(value.strip())
    elif isinstance(value, str) and _DURATION.fullmatch(value.strip().lower()):
        seconds = sum(float(number) * _UNITS[unit]
                      for number, unit in _DURATION_PART.findall(value.strip().lower()))
    else:
        raise ValueError(f"{value!r} is not a duration; write e.g. 90s, 30m, 24h, 1d or seconds")
    if seconds != seconds or seconds in (float("inf"), float("-inf")) or seconds < 0:
        raise ValueError(f"{value!r} is not a duration")
    return seconds


class _ConfigParser:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.base = path.resolve().parent if path is not None else Path.cwd()
        self.errors: list[tuple[int, str]] = []

    def error(self, line: int, message: str) -> None:
        self.errors.append((line, message))

    def mapping(self, value: Any, line: int, what: str, allowed) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(line, f"{what} must be a mapping, not {_describe(value)}")
            return {}
        allowed = tuple(allowed)
        for key in value:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.7)
                hint = f"did you mean {close[0]}?" if close else f"allowed: {', '.join(allowed)}"
                self.error(key_line(value, key, line), f"unknown key {str(key)!r} in {what} ({hint})")
        return value

    def get(self, section: dict, key: str, what: str, check, default):
        """section[key] through `check` (value -> result, ValueError); default when absent/null."""
        if key not in section or section[key] is None:
            return default
        try:
            return check(section[key])
        except ValueError as exc:
            self.error(key_line(section, key), f"{what}{key}: {exc}")
            return default

    def items(self, section: dict, key: str, what: str, check) -> tuple | None:
        """A list (or one value) under `key`, each item through `check`; None when absent."""
        if key not in section or section[key] is None:
            return None
        value = section[key]
        values = value if isinstance(value, list) else [value]
        result = []
        for index, item in enumerate(values):
            try:
                result.append(check(item))
            except ValueError as exc:
                line = item_line(value, index, key_line(section, key)) \
                    if isinstance(value, list) else key_line(section, key)
                self.error(line, f"{what}{key}: {exc}")
        return tuple(result)

    def value(self, section: dict, table: dict[str, Key], key: str, what: str, default):
        """section[key] checked as the table says (one value, or a list for `many` keys)."""
        spec = table[key]
        check = self.file_path if spec.check is _PATH else spec.check
        if spec.many:
            return self.items(section, key, what, check) or default
        return self.get(section, key, what, check, default)

    def values(self, section: dict, table: dict[str, Key], what: str, defaults: dict) -> dict:
        """Every key of a flat section checked as its table says, with the defaults filled in."""
        return {key: self.value(section, table, key, what, defaults.get(key)) for key in table}

    def file_path(self, value: Any) -> Path:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"expected a file or folder path, not {_describe(value)}")
        return self.base / Path(value.strip()).expanduser()

    def config(self, data: Any) -> Config:
        default = Config()
        top = self.mapping(data, getattr(data, "line", 0), "the configuration", TOP)
        sections = {}
        for name in SECTIONS:
            value = top.get(name)
            if name == "query_log" and value is False:  # `query_log: off` is the mode off
                value = {"mode": "off"}
            if value is None or value is False:  # absent, empty or `off`: the section is off
                sections[name] = None
            elif isinstance(value, dict):
                sections[name] = self.section(name, value, key_line(top, name))
            else:
                self.error(key_line(top, name), f"{name} must be a mapping of settings, "
                                                f"not {_describe(value)}")
                sections[name] = None
        return Config(
            path=self.path,
            timezone=self.value(top, TOP, "timezone", "", default.timezone),
            store=self.store(top, default.store),
            state_dir=self.value(top, TOP, "state_dir", "", self.base / default.state_dir),
            policies=self.value(top, TOP, "policies", "", default.policies),
            dns=self.dns(top),
            blocklists=self.blocklists(top),
            **sections,
        )

    def store(self, top: dict, default: str) -> str:
        """`store:`, or `store_file:` (a file holding the URL, which may hold a password)."""
        if top.get("store_file") is None:
            return self.value(top, TOP, "store", "", default)
        if top.get("store") is not None:
            self.error(key_line(top, "store_file"), "give store: or store_file:, not both")
            return default
        path = self.value(top, TOP, "store_file", "", None)
        if path is None:
            return default
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            self.error(key_line(top, "store_file"),
                       f"store_file: cannot read {path}: {exc.strerror or exc}")
            return default
        try:
            return _store(text)
        except ValueError as exc:
            self.error(key_line(top, "store_file"), f"store_file: {path}: {exc}")
            return default

    def section(self, name: str, section: dict, line: int) -> dict | None:
        """An optional section's keys checked as its table says, its defaults filled in."""
        table = TOP[name].fields
        body = self.mapping(section, line, name, table)
        w = f"{name}."
        if name == "metrics":
            if body.get("listen") is None:
                self.error(line, "metrics needs listen: (IP:PORT for /metrics, /healthz and "
                                 "/readyz, e.g. 127.0.0.1:9153)")
                return None
            listen = self.value(body, table, "listen", w, None)
            return None if listen is None else {"listen": listen}
        if name == "query_log":
            return self.values(body, table, w, QUERY_LOG_DEFAULTS)
        if name == "logging":
            return self.values(body, table, w, LOGGING_DEFAULTS)
        if name == "doh":
            return self.values(body, table, w, DOH_DEFAULTS)
        if name == "dashboard":
            return self.values(body, table, w, DASHBOARD_DEFAULTS)
        if name == "dot":
            if body.get("hostname") is None:
                self.error(line, "dot needs hostname: (devices connect to TOKEN.HOSTNAME, "
                                 "e.g. dot.example.org)")
            return self.values(body, table, w, DOT_DEFAULTS)
        # tls: both files, taken from the config's folder
        missing = [key for key in ("cert", "key") if body.get(key) is None]
        if missing:
            self.error(line, f"tls needs {' and '.join(f'{key}:' for key in missing)} "
                             "(PEM files: the certificate chain and its private key)")
        checked = self.values(body, table, w, {})
        return {key: None if path is None else str(path) for key, path in checked.items()}

    def dns(self, top: dict) -> DnsSettings:
        d = DnsSettings()
        section = self.mapping(top.get("dns"), key_line(top, "dns"), "dns", DNS)
        w = "dns."
        listen = self.value(section, DNS, "listen", w, None)
        if listen is not None and not listen and section.get("listen") == []:
            self.error(key_line(section, "listen"), "dns.listen: give at least one address")
        simple = self.values(section, {key: spec for key, spec in DNS.items()
                                       if spec.check is not None and key != "listen"}, w,
                             {key: getattr(d, key) for key in DNS})
        return DnsSettings(
            listen=listen or d.listen,
            forward_zones=self.forward_zones(section),
            block_response=self.block_response(section),
            rate_limit=self.rate_limit(section),
            **{**simple, "upstream_ca_file": self.upstream_ca_file(simple["upstream_ca_file"],
                                                                   section)},
        )

    def upstream_ca_file(self, path: Path | None, section: dict) -> str | None:
        if path is None:
            return None
        if not path.is_file():
            self.error(key_line(section, "upstream_ca_file"), f"dns.upstream_ca_file: {path} is not a file")
            return None
        return str(path)

    def block_response(self, section: dict) -> str:
        if "block_response" in section and section["block_response"] is None:
            return "null"  # an unquoted `null` is YAML's null
        return self.get(section, "block_response", "dns.", _block_response, "null")

    def forward_zones(self, section: dict) -> dict[str, str]:
        value = section.get("forward_zones")
        line = key_line(section, "forward_zones")
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(line, "dns.forward_zones must be a mapping of zone to upstream URL, "
                             "e.g. {ecole.local: \"udp://10.0.0.2:53\"}")
            return {}
        result = {}
        for zone, url in value.items():
            at = key_line(value, zone, line)
            name = normalize_domain(zone) if isinstance(zone, str) else None
            if name is None:
                self.error(at, f"dns.forward_zones: {zone!r} is not a domain name")
                continue
            try:
                _upstream(url)
            except ValueError as exc:
                self.error(at, f"dns.forward_zones: {name}: {exc}")
                continue
            result[name] = url.strip()
        return result

    def rate_limit(self, section: dict) -> RateLimit | None:
        value = section.get("rate_limit")
        line = key_line(section, "rate_limit")
        if value is None or value is False:
            return None
        if not isinstance(value, dict):
            self.error(line, "dns.rate_limit must be a mapping like {qps: 50, burst: 100}, "
                             f"not {_describe(value)}")
            return None
        table = DNS["rate_limit"].fields
        body = self.mapping(value, line, "dns.rate_limit", table)
        d = RateLimit()
        return RateLimit(**self.values(body, table, "dns.rate_limit.",
                                       {"qps": d.qps, "burst": d.burst}))

    def blocklists(self, top: dict) -> BlocklistSettings:
        d = BlocklistSettings()
        section = self.mapping(top.get("blocklists"), key_line(top, "blocklists"), "blocklists",
                               BLOCKLISTS)
        w = "blocklists."
        value = lambda key: self.value(section, BLOCKLISTS, key, w, getattr(d, key))  # noqa: E731
        return BlocklistSettings(
            refresh=value("refresh"),
            sources=self.sources(section),
            bundled=value("bundled"),
            download_timeout=value("download_timeout"),
            max_download_bytes=value("max_download_bytes"),
        )

    def sources(self, section: dict) -> tuple[ListSource, ...]:
        value = section.get("sources")
        line = key_line(section, "sources")
        if value is None:
            return ()
        if not isinstance(value, list):
            self.error(line, "blocklists.sources must be a list of sources, e.g. "
                             "- {name: ads, path: lists/ads.txt, format: hosts, category: ads}")
            return ()
        names: dict[str, int] = {}
        result = []
        for index, item in enumerate(value):
            at = item_line(value, index, line)
            if not isinstance(item, dict):
                self.error(at, f"a blocklists source must be a mapping like {{name: ads, url: "
                               f"..., format: hosts, category: ads}}, not {_describe(item)}")
                continue
            source = self.source(item, at, names)
            if source is not None:
                result.append(source)
        return tuple(result)

    def source(self, item: dict, at: int, names: dict[str, int]) -> ListSource | None:
        before = len(self.errors)
        body = self.mapping(item, at, "a blocklists source", SOURCE)
        name = body.get("name")
        what = "blocklists source: "
        if name is None:
            self.error(at, "a blocklists source needs name: (a short unique id, e.g. ads)")
        elif not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
            self.error(key_line(body, "name", at), f"blocklists source name {name!r} must be 1 "
                       "to 64 letters, digits, '.', '_' or '-'")
        elif name in names:
            self.error(key_line(body, "name", at), f"blocklists source name {name!r} is already "
                                                   f"used (line {names[name]})")
        else:
            names[name] = key_line(body, "name", at)
            what = f"blocklists source {name!r}: "

        origins = [key for key in ("url", "path", "domains") if key in body]
        if len(origins) != 1:
            self.error(at, f"{what}give exactly one of url:, path: or domains: "
                           f"({'none' if not origins else ', '.join(origins)} given)")
        url = self.value(body, SOURCE, "url", what, None)
        path = self.value(body, SOURCE, "path", what, None)
        domains = self.value(body, SOURCE, "domains", what, ())

        fmt = body.get("format")
        if fmt is None:
            self.error(at, f"{what}needs format: ({', '.join(LIST_FORMATS)})")
        fmt = self.value(body, SOURCE, "format", what, None)
        category = self.value(body, SOURCE, "category", what, None)
        usage = self.value(body, SOURCE, "usage", what, None)
        if fmt == "ut1":
            if category is not None:
                self.error(key_line(body, "category", at), f"{what}a ut1 source brings its own "
                           "categories (one per folder); remove category:")
            if usage is not None:
                self.error(key_line(body, "usage", at), f"{what}a ut1 source reads each "
                           "category's usage file; remove usage:")
        elif fmt is not None and category is None and "category" not in body:
            self.error(at, f"{what}needs category: (the name policies use to block it, e.g. ads)")
        match = self.value(body, SOURCE, "match", what, "default")
        if len(self.errors) != before:
            return None
        return ListSource(
            name=name,
            format=fmt,
            url=url,
            path=None if path is None else str(path),
            domains=domains,
            category=category,
            match=match,
            usage=usage,
        )


# Checks: value -> typed value, or ValueError with the reason.


def _schema(schema: dict):
    """Attach the JSON Schema of the values a check accepts (read by `json_schema()`)."""
    def attach(check):
        check.schema = schema
        return check
    return attach


@_schema({"type": "string", "minLength": 1})
def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected text, not {_describe(value)}")
    return value.strip()


@_schema({"type": "boolean"})
def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, not {_describe(value)}")
    return value


def _int_range(low: int, high: int):
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}, "
                             f"not {_describe(value)}")
        return value
    check.schema = {"type": "integer", "minimum": low, "maximum": high}
    return check


@_schema({"type": "number", "exclusiveMinimum": 0})
def _positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"expected a number above 0, not {_describe(value)}")
    return float(value)


@_schema({"anyOf": [{"type": "number", "exclusiveMinimum": 0},
                   {"type": "string", "pattern": r"^\s*(\d+(\.\d+)?([mM][sS]|[sSmMhHdD])?)+\s*$"}],
          "description": "a duration: seconds, or e.g. 500ms, 90s, 30m, 24h, 1d, 1h30m"})
def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"{value!r} must be longer than 0")
    return seconds


def _choice(*choices: str):
    def check(value: Any) -> str:
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        raise ValueError(f"expected {' | '.join(choices)}, not {_describe(value)}")
    check.schema = {"enum": list(choices)}
    return check


@_schema({"type": "string", "minLength": 1, "examples": ["Europe/Paris", "UTC"],
          "description": "a tz database zone name"})
def _timezone(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a zone name like Europe/Paris, not {_describe(value)}")
    try:
        zoneinfo.ZoneInfo(value.strip())
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (use a name like Europe/Paris or UTC)") \
            from None
    return value.strip()


@_schema({"type": "string", "pattern": r"^(embedded|(redis|rediss|redis\+sentinel)://.+)$",
          "examples": ["embedded", "redis://redis:6379/0"]})
def _store(value: Any) -> str:
    text = _text(value)
    if text == "embedded":
        return text
    scheme = text.partition("://")[0].lower()
    if scheme in STORE_SCHEMES and urlsplit(text).netloc:
        return text
    raise ValueError("expected embedded, redis://HOST:PORT/DB, rediss://... or "
                     "redis+sentinel://... (the value is not shown: it may hold a password)")


@_schema({"type": "string", "pattern": r"^(\[[0-9A-Fa-f:.]+\]|[0-9.]+):[0-9]{1,5}$",
          "description": "IP:PORT, IPv6 as [ADDRESS]:PORT", "examples": ["0.0.0.0:53"]})
def _listen(value: Any) -> str:
    host, port = parse_listen(value)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@_schema({"type": "string", "pattern": r"^\s*([uU][dD][pP]|[tT][cC][pP]|[tT][lL][sS]|[hH][tT][tT][pP][sS])://",
          "examples": ["udp://9.9.9.9", "tls://149.112.112.112#dns.quad9.net"]})
def _upstream(value: Any) -> str:
    parse_upstream(value)
    return value.strip()


@_schema({"type": "string", "minLength": 1, "description": "an address or a network",
          "examples": ["10.0.0.0/8", "192.0.2.1"]})
def _network(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a network like 10.0.0.0/8, not {_describe(value)}")
    try:
        return str(ipaddress.ip_network(value.strip(), strict=True))
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not a network; write e.g. 10.0.0.0/8 or 10.0.0.5") \
            from None
    raise ValueError(f"{value!r} has host bits set; did you mean '{loose}'?")


_URL_PATH = re.compile(r"(?:/[A-Za-z0-9._~-]+)+")


@_schema({"type": "string", "pattern": r"^\s*(/[A-Za-z0-9._~-]+)+/?\s*$"})
def _url_path(value: Any) -> str:
    text = _text(value).rstrip("/")
    if not _URL_PATH.fullmatch(text):
        raise ValueError(f"{value!r}: write a URL path like /dns-query (letters, digits, '.', "
                         "'_', '~', '-' between slashes)")
    return text


@_schema({"type": "string", "pattern": r"^\s*https?://", "format": "uri"})
def _public_url(value: Any) -> str:
    text = _text(value).rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r}: write the address tablets use, e.g. "
                         "https://dns.example.org/dns-query")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{text!r}: the DoH address takes no ?query, #fragment or user name")
    return text


@_schema({"anyOf": [{"type": "null"}, {"type": "string", "minLength": 1, "examples":
          ["null", "nxdomain", "refused", "ip:10.0.0.80", "ip:10.0.0.80,2001:db8::80"]}]})
def _block_response(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected null, nxdomain, refused or ip:A[,AAAA], not {_describe(value)}")
    text = value.strip().lower()
    if text in ("null", "nxdomain", "refused"):
        return text
    if text.startswith("ip:"):
        v4, _, v6 = text[3:].partition(",")
        try:
            ipaddress.IPv4Address(v4.strip())
            if v6:
                ipaddress.IPv6Address(v6.strip())
        except ValueError:
            raise ValueError(f"{value!r}: write ip:IPv4 or ip:IPv4,IPv6, "
                             "e.g. ip:10.0.0.80,2001:db8::80") from None
        return f"ip:{v4.strip()}" + (f",{v6.strip()}" if v6 else "")
    raise ValueError(f"expected null, nxdomain, refused or ip:A[,AAAA], not {value!r}")


@_schema({"type": "string", "pattern": r"^\s*[A-Za-z0-9][A-Za-z0-9._-]{0,63}\s*$"})
def _category(value: Any) -> str:
    if not isinstance(value, str) or not _NAME_PATTERN.fullmatch(value.strip()):
        raise ValueError(f"category must be a short name like ads, not {_describe(value)}")
    return value.strip()


@_schema({"type": "string", "pattern": r"^\s*https?://", "format": "uri"})
def _list_url(value: Any) -> str:
    text = _text(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{text!r} is not an http:// or https:// URL")
    return text


@_schema({"type": "string", "minLength": 1, "examples": ["https://admin.example.org"]})
def _dashboard_url(value: Any) -> str:
    text = _text(value).rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r}: write the address admins and teachers use, e.g. "
                         "https://admin.example.org")
    return text


@_schema({"type": "string", "minLength": 1, "examples": ["dot.example.org"]})
def _hostname(value: Any) -> str:
    name = normalize_domain(value) if isinstance(value, str) else None
    if name is None or "." not in name:
        raise ValueError(f"expected a host name like dot.example.org, not {_describe(value)}")
    return name


@_schema({"type": "string", "minLength": 1,
          "description": "a path; a relative one is taken from the configuration file's folder"})
def _PATH(value: Any) -> Path:  # noqa: N802 - a marker: the parser reads it with file_path
    raise AssertionError("read by _ConfigParser.file_path")


# --- the keys of every section: how each is checked, and its JSON Schema -----------------------


@dataclass(frozen=True, slots=True)
class Key:
    """One configuration key. `check`: value -> typed value, or ValueError with the reason (its
    `.schema` describes what it accepts); _PATH: a path from the config file's folder; None: read
    by a method of the parser of its own (then `schema` says what it accepts). `fields`: a
    section (a mapping of keys), `list_of` a list of such mappings."""

    check: Any = None
    schema: dict | None = None
    many: bool = False  # one value, or a list of them
    fields: dict | None = None
    required: tuple[str, ...] = ()
    list_of: bool = False
    can_be_off: bool = False  # `false` (or `off`) turns the section off


QUERY_LOG = {"mode": Key(_choice("off", "aggregate", "full")),
             "retention_days": Key(_int_range(1, 3660)),
             "scope": Key(_choice("school", "all"))}
LOGGING = {"format": Key(_choice("text", "json")),
           "level": Key(_choice("debug", "info", "warning", "error"))}
RATE_LIMIT = {"qps": Key(_positive_number), "burst": Key(_int_range(1, 10**6))}
DNS = {
    "listen": Key(_listen, many=True),
    "upstreams": Key(_upstream, many=True),
    "forward_zones": Key(schema={"type": ["object", "null"], "propertyNames": {"minLength": 1},
                                 "additionalProperties": _upstream.schema}),
    "block_response": Key(schema=_block_response.schema),
    "block_ttl": Key(_int_range(0, MAX_TTL)),
    "policy_ttl": Key(_int_range(0, MAX_TTL)),
    "unknown_clients": Key(_choice("refuse", "default")),
    "allow_open": Key(_bool),
    "trusted_forwarders": Key(_network, many=True),
    "rate_limit": Key(fields=RATE_LIMIT, can_be_off=True),
    "upstream_timeout": Key(_positive_duration),
    "upstream_probe_interval": Key(_positive_duration),
    "cache_size": Key(_int_range(0, 10**9)),
    "tcp_idle_timeout": Key(_positive_duration),
    "tcp_max_connections": Key(_int_range(1, 10**6)),
    "fast_path": Key(_bool),
    "upstream_ca_file": Key(_PATH),
    "upstream_ad": Key(_choice("clear", "trust")),
}
SOURCE = {
    "name": Key(schema={"type": "string", "pattern": _NAME_PATTERN.pattern.join("^$")}),
    "url": Key(_list_url),
    "path": Key(_PATH),
    "domains": Key(_text, many=True),
    "format": Key(_choice(*LIST_FORMATS)),
    "category": Key(_category),
    "match": Key(_choice("default", "suffix")),
    "usage": Key(_choice("black", "white")),
}
BLOCKLISTS = {
    "refresh": Key(_positive_duration),
    "sources": Key(fields=SOURCE, list_of=True, required=("name", "format")),
    "bundled": Key(_bool),
    "download_timeout": Key(_positive_duration),
    "max_download_bytes": Key(_int_range(1, 2**40)),
}
DOH = {"listen": Key(_listen), "path": Key(_url_path), "public_url": Key(_public_url),
       "trusted_proxies": Key(_network, many=True),
       "max_connections": Key(_int_range(1, 10**6)),  # and a quarter of it per address
       "idle_timeout": Key(_positive_duration)}  # to finish a request, after opening or answering
DOT = {"listen": Key(_listen), "hostname": Key(_hostname)}
TLS = {"cert": Key(_PATH), "key": Key(_PATH)}
DASHBOARD = {"listen": Key(_listen), "public_url": Key(_dashboard_url),
             "trusted_proxies": Key(_network, many=True)}
METRICS = {"listen": Key(_listen)}
TOP = {
    "timezone": Key(_timezone),
    "store": Key(_store),
    "store_file": Key(_PATH),
    "state_dir": Key(_PATH),
    "policies": Key(_PATH),
    "dns": Key(fields=DNS),
    "blocklists": Key(fields=BLOCKLISTS),
    "doh": Key(fields=DOH, can_be_off=True),
    "dot": Key(fields=DOT, required=("hostname",), can_be_off=True),
    "tls": Key(fields=TLS, required=("cert", "key"), can_be_off=True),
    "dashboard": Key(fields=DASHBOARD, can_be_off=True),
    "metrics": Key(fields=METRICS, required=("listen",), can_be_off=True),
    "query_log": Key(fields=QUERY_LOG, can_be_off=True),
    "logging": Key(fields=LOGGING, can_be_off=True),
}

# The keys a container sets from its environment: CLASSGUARD_SECTION_KEY (a list as
# comma-separated values), and NAME_FILE for each, read from that file (a mounted secret).
_ENVIRONMENT_KEYS = (
    ("timezone",), ("store",), ("state_dir",), ("policies",),
    ("dns", "listen"), ("dns", "upstreams"),
    ("doh", "listen"), ("doh", "public_url"), ("dot", "listen"), ("dot", "hostname"),
    ("tls", "cert"), ("tls", "key"),
    ("dashboard", "listen"), ("dashboard", "public_url"),
    ("metrics", "listen"), ("logging", "level"), ("logging", "format"),
)
ENVIRONMENT = {ENV_PREFIX + "_".join(keys).upper(): keys for keys in _ENVIRONMENT_KEYS}


def json_schema() -> dict:
    """The JSON Schema of the configuration file, made from the tables the parser checks with
    (docs/classguard.schema.json: `classguard config schema`, `make schema`)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "classguard configuration (classguard.yaml)",
        "description": "See docs/configuration.md. Generated by `classguard config schema`.",
        **_mapping_schema(TOP, ()),
    }


def _mapping_schema(fields: dict[str, Key], required: tuple[str, ...]) -> dict:
    schema = {"type": "object", "additionalProperties": False,
              "properties": {key: _key_schema(spec) for key, spec in fields.items()}}
    if required:
        schema["required"] = list(required)
    return schema


def _key_schema(spec: Key) -> dict:
    if spec.fields is not None:
        body = _mapping_schema(spec.fields, spec.required)
        if spec.list_of:
            return {"type": ["array", "null"], "items": body}
        choices = [body, {"type": "null"}] + ([{"const": False}] if spec.can_be_off else [])
        return {"anyOf": choices}
    one = dict(spec.schema if spec.schema is not None else spec.check.schema)
    if spec.many:
        return {"anyOf": [one, {"type": "array", "items": one}]}
    return one
