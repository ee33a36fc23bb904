"""The configuration file: its sections as typed settings, each with its documented default."""

from __future__ import annotations

import difflib
import ipaddress
import re
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
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

TOP_KEYS = (
    "timezone", "store", "state_dir", "policies", "dns", "blocklists",
    "doh", "dot", "tls", "dashboard", "metrics", "query_log", "logging",
)
DNS_KEYS = (
    "listen", "upstreams", "forward_zones", "block_response", "block_ttl", "policy_ttl",
    "unknown_clients", "allow_open", "trusted_forwarders", "rate_limit", "upstream_timeout",
    "cache_size", "tcp_idle_timeout", "tcp_max_connections", "fast_path", "upstream_ca_file",
    "upstream_probe_interval",
)
RATE_LIMIT_KEYS = ("qps", "burst")
DOH_KEYS = ("listen", "path", "public_url", "trusted_proxies", "max_connections", "idle_timeout")
# The `doh` section once read (a plain mapping, every key filled in): docs/configuration.md.
DOH_DEFAULTS = {"listen": "127.0.0.1:8053", "path": "/dns-query", "public_url": None,
                "trusted_proxies": (), "max_connections": 1000, "idle_timeout": 10.0}
BLOCKLIST_KEYS = ("refresh", "sources", "bundled", "download_timeout", "max_download_bytes")
SOURCE_KEYS = ("name", "url", "path", "domains", "format", "category", "match", "usage")
SECTIONS = ("doh", "dot", "tls", "dashboard", "metrics", "query_log", "logging")
# Sections whose keys are checked here (the others are read by the server that uses them).
METRICS_KEYS = ("listen",)
QUERY_LOG_KEYS = ("mode", "retention_days", "scope")
LOGGING_KEYS = ("format", "level")
LOGGING_DEFAULTS = {"format": "text", "level": "info"}

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


def load_config(path: Path | None) -> Config:
    """The configuration in `path`; None: ./classguard.yaml when present, else the defaults."""
    if path is None:
        if not DEFAULT_CONFIG_FILE.is_file():
            return Config()
        path = DEFAULT_CONFIG_FILE
    path = Path(path)
    try:
        data, _ = load_yaml(path)
    except YamlError as exc:
        raise ConfigError([str(exc)]) from None
    return parse_config(data, path=path)


def parse_config(data: Any, *, path: Path) -> Config:
    """Validate already-loaded configuration data; relative paths are taken from path's folder."""
    parser = _ConfigParser(path)
    config = parser.config(data)
    if parser.errors:
        ordered = sorted(parser.errors, key=lambda error: error[0])  # file order
        raise ConfigError([f"{path}:{line}: {message}" for line, message in ordered])
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
    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = path.resolve().parent
        self.errors: list[tuple[int, str]] = []

    def error(self, line: int, message: str) -> None:
        self.errors.append((line, message))

    def mapping(self, value: Any, line: int, what: str, allowed: tuple[str, ...]) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(line, f"{what} must be a mapping, not {_describe(value)}")
            return {}
        for key in value:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.7)
                hint = f"did you mean '{close[0]}'? " if close else ""
                self.error(key_line(value, key, line),
                           f"unknown key {str(key)!r} in {what} ({hint}allowed: "
                           f"{', '.join(allowed)})")
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

    def file_path(self, value: Any) -> Path:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"expected a file or folder path, not {_describe(value)}")
        return self.base / Path(value.strip()).expanduser()

    def config(self, data: Any) -> Config:
        default = Config()
        top = self.mapping(data, getattr(data, "line", 0), "the configuration", TOP_KEYS)
        sections = {}
        for name in SECTIONS:
            value = top.get(name)
            if name == "query_log" and value is False:  # `query_log: off` is the mode off
                value = {"mode": "off"}
            if value is None or value is False:  # absent, empty or `off`: the section is off
                sections[name] = None
            elif isinstance(value, dict):
                sections[name] = self.checked_section(name, self.section_paths(name, value),
                                                      key_line(top, name))
            else:
                self.error(key_line(top, name), f"{name} must be a mapping of settings, "
                                                f"not {_describe(value)}")
                sections[name] = None
        if sections["doh"] is not None:
            sections["doh"] = self.doh(sections["doh"], key_line(top, "doh"))
        if sections["dashboard"] is not None:
            sections["dashboard"] = self.dashboard(sections["dashboard"])
        return Config(
            path=self.path,
            timezone=self.get(top, "timezone", "", _timezone, default.timezone),
            store=self.get(top, "store", "", _store, default.store),
            state_dir=self.get(top, "state_dir", "", self.file_path,
                               self.base / default.state_dir),
            policies=self.get(top, "policies", "", self.file_path, default.policies),
            dns=self.dns(top),
            blocklists=self.blocklists(top),
            **sections,
        )

    def section_paths(self, name: str, section: dict) -> dict:
        """A copy of `section` with its file paths (tls cert and key) taken from the config's
        folder; the other keys are read by the server that uses the section."""
        if name != "tls":
            return section
        copy = type(section)(section)
        if isinstance(section, LineDict):
            copy.line, copy.key_lines = section.line, dict(section.key_lines)
        for key in ("cert", "key"):
            if key in copy and copy[key] is not None:
                try:
                    copy[key] = str(self.file_path(copy[key]))
                except ValueError as exc:
                    self.error(key_line(section, key), f"tls.{key}: {exc}")
        return copy

    def checked_section(self, name: str, section: dict, line: int) -> dict | None:
        """metrics, query_log and logging: keys checked, defaults filled in; others as given."""
        if name == "metrics":
            body = self.mapping(section, line, "metrics", METRICS_KEYS)
            if body.get("listen") is None:
                self.error(line, "metrics needs listen: (IP:PORT for /metrics, /healthz and "
                                 "/readyz, e.g. 127.0.0.1:9153)")
                return None
            listen = self.get(body, "listen", "metrics.", _listen, None)
            return None if listen is None else {"listen": listen}
        if name == "query_log":
            body = self.mapping(section, line, "query_log", QUERY_LOG_KEYS)
            d, w = QUERY_LOG_DEFAULTS, "query_log."
            return {
                "mode": self.get(body, "mode", w, _choice("off", "aggregate", "full"), d["mode"]),
                "retention_days": self.get(body, "retention_days", w, _int_range(1, 3660),
                                           d["retention_days"]),
                "scope": self.get(body, "scope", w, _choice("school", "all"), d["scope"]),
            }
        if name == "logging":
            body = self.mapping(section, line, "logging", LOGGING_KEYS)
            d, w = LOGGING_DEFAULTS, "logging."
            return {
                "format": self.get(body, "format", w, _choice("text", "json"), d["format"]),
                "level": self.get(body, "level", w, _choice("debug", "info", "warning", "error"),
                                  d["level"]),
            }
        return section

    def dns(self, top: dict) -> DnsSettings:
        d = DnsSettings()
        section = self.mapping(top.get("dns"), key_line(top, "dns"), "dns", DNS_KEYS)
        w = "dns."
        listen = self.items(section, "listen", w, _listen)
        if listen is not None and not listen and section.get("listen") == []:
            self.error(key_line(section, "listen"), "dns.listen: give at least one address")
        upstreams = self.items(section, "upstreams", w, _upstream)
        return DnsSettings(
            listen=listen or d.listen,
            upstreams=upstreams or d.upstreams,
            forward_zones=self.forward_zones(section),
            block_response=self.block_response(section),
            block_ttl=self.get(section, "block_ttl", w, _int_range(0, MAX_TTL), d.block_ttl),
            policy_ttl=self.get(section, "policy_ttl", w, _int_range(0, MAX_TTL), d.policy_ttl),
            unknown_clients=self.get(section, "unknown_clients", w,
                                     _choice("refuse", "default"), d.unknown_clients),
            allow_open=self.get(section, "allow_open", w, _bool, d.allow_open),
            trusted_forwarders=self.items(section, "trusted_forwarders", w, _network)
            or d.trusted_forwarders,
            rate_limit=self.rate_limit(section),
            upstream_timeout=self.get(section, "upstream_timeout", w, _positive_duration,
                                      d.upstream_timeout),
            upstream_probe_interval=self.get(section, "upstream_probe_interval", w,
                                             _positive_duration, d.upstream_probe_interval),
            cache_size=self.get(section, "cache_size", w, _int_range(0, 10**9), d.cache_size),
            tcp_idle_timeout=self.get(section, "tcp_idle_timeout", w, _positive_duration,
                                      d.tcp_idle_timeout),
            tcp_max_connections=self.get(section, "tcp_max_connections", w,
                                         _int_range(1, 10**6), d.tcp_max_connections),
            fast_path=self.get(section, "fast_path", w, _bool, d.fast_path),
            upstream_ca_file=self.upstream_ca_file(section),
        )

    def upstream_ca_file(self, section: dict) -> str | None:
        path = self.get(section, "upstream_ca_file", "dns.", self.file_path, None)
        if path is None:
            return None
        if not path.is_file():
            self.error(key_line(section, "upstream_ca_file"), f"dns.upstream_ca_file: {path} is not a file")
            return None
        return str(path)

    def doh(self, section: dict, line: int) -> dict:
        """The `doh` section checked, with its defaults filled in (DOH_DEFAULTS)."""
        body = self.mapping(section, line, "doh", DOH_KEYS)
        d, w = DOH_DEFAULTS, "doh."
        return {
            "listen": self.get(body, "listen", w, _listen, d["listen"]),
            "path": self.get(body, "path", w, _url_path, d["path"]),
            "public_url": self.get(body, "public_url", w, _public_url, d["public_url"]),
            "trusted_proxies": self.items(body, "trusted_proxies", w, _network)
            or d["trusted_proxies"],
            "max_connections": self.get(body, "max_connections", w, _int_range(1, 10**6),
                                        d["max_connections"]),
            "idle_timeout": self.get(body, "idle_timeout", w, _positive_duration, d["idle_timeout"]),
        }

    def dashboard(self, section: dict) -> dict:
        """The `dashboard` section as given (its server reads the other keys), with
        `trusted_proxies` checked: addresses or networks, none by default."""
        body = dict(section)
        body["trusted_proxies"] = self.items(section, "trusted_proxies", "dashboard.", _network) or ()
        return body

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
        body = self.mapping(value, line, "dns.rate_limit", RATE_LIMIT_KEYS)
        d = RateLimit()
        return RateLimit(
            qps=self.get(body, "qps", "dns.rate_limit.", _positive_number, d.qps),
            burst=self.get(body, "burst", "dns.rate_limit.", _int_range(1, 10**6), d.burst),
        )

    def blocklists(self, top: dict) -> BlocklistSettings:
        d = BlocklistSettings()
        section = self.mapping(top.get("blocklists"), key_line(top, "blocklists"), "blocklists",
                               BLOCKLIST_KEYS)
        w = "blocklists."
        return BlocklistSettings(
            refresh=self.get(section, "refresh", w, _positive_duration, d.refresh),
            sources=self.sources(section),
            bundled=self.get(section, "bundled", w, _bool, d.bundled),
            download_timeout=self.get(section, "download_timeout", w, _positive_duration,
                                      d.download_timeout),
            max_download_bytes=self.get(section, "max_download_bytes", w, _int_range(1, 2**40),
                                        d.max_download_bytes),
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
        body = self.mapping(item, at, "a blocklists source", SOURCE_KEYS)
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
        url = self.get(body, "url", what, _list_url, None)
        path = self.get(body, "path", what, self.file_path, None)
        domains = self.items(body, "domains", what, _text) or ()

        fmt = body.get("format")
        if fmt is None:
            self.error(at, f"{what}needs format: ({', '.join(LIST_FORMATS)})")
        fmt = self.get(body, "format", what, _choice(*LIST_FORMATS), None)
        category = self.get(body, "category", what, _category, None)
        usage = self.get(body, "usage", what, _choice("black", "white"), None)
        if fmt == "ut1":
            if category is not None:
                self.error(key_line(body, "category", at), f"{what}a ut1 source brings its own "
                           "categories (one per folder); remove category:")
            if usage is not None:
                self.error(key_line(body, "usage", at), f"{what}a ut1 source reads each "
                           "category's usage file; remove usage:")
        elif fmt is not None and category is None and "category" not in body:
            self.error(at, f"{what}needs category: (the name policies use to block it, e.g. ads)")
        match = self.get(body, "match", what, _choice("default", "suffix"), "default")
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


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected text, not {_describe(value)}")
    return value.strip()


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
    return check


def _positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"expected a number above 0, not {_describe(value)}")
    return float(value)


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
    return check


def _timezone(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a zone name like Europe/Paris, not {_describe(value)}")
    try:
        zoneinfo.ZoneInfo(value.strip())
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (use a name like Europe/Paris or UTC)") \
            from None
    return value.strip()


def _store(value: Any) -> str:
    text = _text(value)
    if text == "embedded":
        return text
    scheme = text.partition("://")[0].lower()
    if scheme in STORE_SCHEMES and urlsplit(text).netloc:
        return text
    raise ValueError("expected embedded, redis://HOST:PORT/DB, rediss://... or "
                     "redis+sentinel://... (the value is not shown: it may hold a password)")


def _listen(value: Any) -> str:
    host, port = parse_listen(value)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _upstream(value: Any) -> str:
    parse_upstream(value)
    return value.strip()


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


def _url_path(value: Any) -> str:
    text = _text(value).rstrip("/")
    if not _URL_PATH.fullmatch(text):
        raise ValueError(f"{value!r}: write a URL path like /dns-query (letters, digits, '.', "
                         "'_', '~', '-' between slashes)")
    return text


def _public_url(value: Any) -> str:
    text = _text(value).rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r}: write the address tablets use, e.g. "
                         "https://dns.example.org/dns-query")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{text!r}: the DoH address takes no ?query, #fragment or user name")
    return text


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


def _category(value: Any) -> str:
    if not isinstance(value, str) or not _NAME_PATTERN.fullmatch(value.strip()):
        raise ValueError(f"category must be a short name like ads, not {_describe(value)}")
    return value.strip()


def _list_url(value: Any) -> str:
    text = _text(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{text!r} is not an http:// or https:// URL")
    return text
