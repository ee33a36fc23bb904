"""The configuration file loader: SPEC §4 loads, defaults hold, every mistake is named with its line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from blocklists.settings import ListSource
from classguard.config import Config, ConfigError, load_config, parse_duration
from common.addresses import parse_listen
from resolver.settings import DnsSettings, RateLimit, parse_upstream

SPEC_CONFIG = """\
timezone: Europe/Paris            # schedules are evaluated in this zone
store: embedded                   # embedded (default, persisted under state_dir) | redis://H:P/DB
state_dir: ./classguard-state
policies: policies.yaml           # seed: imported into an empty store at first start
dns:
  listen: ["127.0.0.1:1053"]      # UDP and TCP on each; "[::1]:1053" for IPv6
  upstreams: ["udp://127.0.0.1:5300"]   # udp://H:P (TCP fallback on TC), tcp://, tls://H:P#SNI
  forward_zones: {ecole.local: "udp://10.0.0.2:53"}   # conditional forwarding for school domains
  block_response: "null"          # null | nxdomain | refused | ip:A[,AAAA]
  block_ttl: 60
  policy_ttl: 60
  unknown_clients: refuse         # refuse | default
  trusted_forwarders: []          # sources whose EDNS0 client subnet is believed
  rate_limit: {qps: 50, burst: 100}   # per identified client
doh:  {listen: "127.0.0.1:8053", path: /dns-query, public_url: "https://dns.example.org/dns-query", trusted_proxies: []}
dot:  {listen: "127.0.0.1:8853", hostname: dot.example.org}   # needs tls; clients use port 853
tls:  {cert: cert.pem, key: key.pem}  # when set, DoH serves HTTPS too
dashboard: {listen: "127.0.0.1:8080", public_url: "https://admin.example.org"}
metrics:   {listen: "127.0.0.1:9153"}
blocklists:
  refresh: 24h
  sources:
    - {name: ut1, url: "https://dsi.ut-capitole.fr/blacklists/download/blacklists.tar.gz", format: ut1}
    - {name: ads, path: lists/ads.txt, format: hosts, category: ads, match: suffix}
query_log: {mode: aggregate, retention_days: 7, scope: school}   # off | aggregate | full
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "classguard.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def errors_of(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == "\n".join(caught.value.errors)
    return [error.removeprefix(f"{path}:") for error in caught.value.errors]


def test_spec_example_loads(tmp_path):
    path = write(tmp_path, SPEC_CONFIG)
    config = load_config(path)
    base = tmp_path.resolve()
    assert config.path == path
    assert config.timezone == "Europe/Paris"
    assert config.store == "embedded"
    assert config.state_dir == base / "classguard-state"
    assert config.policies == base / "policies.yaml"
    assert config.dns.listen == ("127.0.0.1:1053",)
    assert config.dns.upstreams == ("udp://127.0.0.1:5300",)
    assert config.dns.forward_zones == {"ecole.local": "udp://10.0.0.2:53"}
    assert config.dns.block_response == "null"
    assert config.dns.rate_limit == RateLimit(qps=50.0, burst=100)
    assert config.doh["path"] == "/dns-query"
    assert config.dot["hostname"] == "dot.example.org"
    assert config.tls == {"cert": str(base / "cert.pem"), "key": str(base / "key.pem")}
    assert config.metrics == {"listen": "127.0.0.1:9153"}
    assert config.query_log["mode"] == "aggregate"
    assert config.blocklists.refresh == 86400.0
    assert config.blocklists.sources == (
        ListSource(name="ut1", format="ut1",
                   url="https://dsi.ut-capitole.fr/blacklists/download/blacklists.tar.gz"),
        ListSource(name="ads", format="hosts", path=str(base / "lists" / "ads.txt"),
                   category="ads", match="suffix"),
    )


def test_no_file_means_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config(None) == Config()


def test_no_path_reads_classguard_yaml_in_the_current_folder(tmp_path, monkeypatch):
    write(tmp_path, "timezone: UTC\ndns: {block_ttl: 30}\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(None)
    assert config.dns.block_ttl == 30
    assert config.state_dir == tmp_path.resolve() / "classguard-state"


def test_empty_file_gives_defaults(tmp_path):
    config = load_config(write(tmp_path, "# empty\n"))
    assert config.dns == DnsSettings()
    assert config.policies is None
    assert config.doh is None and config.query_log is None


def test_unquoted_null_block_response_and_sections_off(tmp_path):
    config = load_config(write(tmp_path, """\
        dns:
          block_response: null
          rate_limit: off
        doh: off
        dashboard:
        """))
    assert config.dns.block_response == "null"
    assert config.dns.rate_limit is None
    assert config.doh is None and config.dashboard is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [("nxdomain", "nxdomain"), ("REFUSED", "refused"), ("ip:10.0.0.80", "ip:10.0.0.80"),
     ('"ip:10.0.0.80, 2001:db8::80"', "ip:10.0.0.80,2001:db8::80")],
)
def test_block_responses(tmp_path, value, expected):
    config = load_config(write(tmp_path, f"dns: {{block_response: {value}}}\n"))
    assert config.dns.block_response == expected


def test_absolute_paths_and_other_keys(tmp_path):
    config = load_config(write(tmp_path, f"""\
        state_dir: {tmp_path}/state
        store: "redis://127.0.0.1:6379/0"
        dns:
          listen: ["[::1]:1053", "0.0.0.0:53"]
          upstreams: ["tls://9.9.9.9#dns.quad9.net", "https://dns.google/dns-query"]
          unknown_clients: default
          allow_open: true
          trusted_forwarders: ["10.0.0.0/8", "192.0.2.1"]
          rate_limit: {{qps: 2.5}}
          upstream_timeout: 1500ms
          cache_size: 0
          tcp_idle_timeout: 30
          tcp_max_connections: 10
        blocklists:
          refresh: 3600
          bundled: false
          download_timeout: 5m
          max_download_bytes: 1000
          sources:
            - {{name: mine, domains: [a.example, b.example], format: domains, category: chat,
               usage: white}}
        """))
    assert config.state_dir == tmp_path / "state"
    assert config.store == "redis://127.0.0.1:6379/0"
    dns = config.dns
    assert dns.listen == ("[::1]:1053", "0.0.0.0:53")
    assert dns.unknown_clients == "default" and dns.allow_open is True
    assert dns.trusted_forwarders == ("10.0.0.0/8", "192.0.2.1/32")
    assert dns.rate_limit == RateLimit(qps=2.5, burst=100)
    assert (dns.upstream_timeout, dns.cache_size, dns.tcp_idle_timeout) == (1.5, 0, 30.0)
    assert config.blocklists.refresh == 3600.0
    assert config.blocklists.bundled is False
    assert config.blocklists.download_timeout == 300.0
    assert config.blocklists.sources[0] == ListSource(
        name="mine", format="domains", domains=("a.example", "b.example"), category="chat",
        usage="white")


ERROR_CASES = [
    pytest.param("timezone: Europe/Pariss\n", ["1: timezone: unknown time zone 'Europe/Pariss'"],
                 id="timezone"),
    pytest.param("dnss: {}\nstore: mysql://x\n",
                 ["1: unknown key 'dnss' in the configuration (did you mean dns?)",
                  "2: store: expected embedded, redis://HOST:PORT/DB"],
                 id="top-level"),
    pytest.param(
        """\
        dns:
          listen:
            - "127.0.0.1:1053"
            - "::1:1053"
            - "localhost:53"
            - "127.0.0.1:70000"
          upstream: []
        """,
        ["4: dns.listen: '::1:1053': put an IPv6 address in brackets, e.g. [::1]:1053",
         "5: dns.listen: 'localhost:53': 'localhost' is not an IP address",
         "6: dns.listen: '127.0.0.1:70000': port '70000' is not a number from 0 to 65535",
         "7: unknown key 'upstream' in dns (did you mean upstreams?)"],
        id="listen",
    ),
    pytest.param(
        """\
        dns:
          upstreams:
            - udp://9.9.9.9
            - 9.9.9.9
            - "udp://9.9.9.9:53#sni"
            - "tcp://9.9.9.9:99999"
            - "tls://[::1]:853/path"
          forward_zones:
            ecole.local: "http://10.0.0.2"
            "bad zone": "udp://10.0.0.2"
        """,
        ["4: dns.upstreams: '9.9.9.9': an upstream starts with udp://, tcp://, tls:// or https://",
         "5: dns.upstreams: 'udp://9.9.9.9:53#sni': #SNI is only for tls:// upstreams",
         "6: dns.upstreams: 'tcp://9.9.9.9:99999':",
         "7: dns.upstreams: 'tls://[::1]:853/path': a tls upstream has no path or query",
         "9: dns.forward_zones: ecole.local: 'http://10.0.0.2': an upstream starts with",
         "10: dns.forward_zones: 'bad zone' is not a domain name"],
        id="upstreams",
    ),
    pytest.param(
        """\
        dns:
          block_response: ip:10.0.0.300
          block_ttl: -1
          policy_ttl: "60"
          unknown_clients: allow
          allow_open: "yes"
          trusted_forwarders: ["10.0.0.1/8"]
          rate_limit: {qps: 0, burts: 5}
          upstream_timeout: soon
          tcp_max_connections: 0
        """,
        ["2: dns.block_response: 'ip:10.0.0.300': write ip:IPv4 or ip:IPv4,IPv6",
         "3: dns.block_ttl: expected a whole number from 0 to 86400, not -1",
         "4: dns.policy_ttl: expected a whole number from 0 to 86400, not '60'",
         "5: dns.unknown_clients: expected refuse | default, not 'allow'",
         "6: dns.allow_open: expected true or false, not 'yes'",
         "7: dns.trusted_forwarders: '10.0.0.1/8' has host bits set; did you mean '10.0.0.0/8'?",
         "8: unknown key 'burts' in dns.rate_limit (did you mean burst?)",
         "8: dns.rate_limit.qps: expected a number above 0, not 0",
         "9: dns.upstream_timeout: 'soon' is not a duration",
         "10: dns.tcp_max_connections: expected a whole number from 1 to 1000000, not 0"],
        id="dns-values",
    ),
    pytest.param(
        """\
        dns: [a]
        doh: "127.0.0.1:8053"
        metrics: 9153
        """,
        ["1: dns must be a mapping, not a list",
         "2: doh must be a mapping of settings, not '127.0.0.1:8053'",
         "3: metrics must be a mapping of settings, not 9153"],
        id="sections",
    ),
    pytest.param(
        """\
        blocklists:
          refresh: 0
          bundled: maybe
          sources:
            - {name: ads, path: ads.txt, format: hosts, category: ads}
            - {name: ads, path: more.txt, format: hosts, category: ads}
            - {name: two, path: x.txt, url: "https://x.example/list", format: hosts, category: x}
            - {name: none, format: hosts, category: x}
            - {path: x.txt, format: hosts, category: x}
            - {name: nofmt, path: x.txt, category: x}
            - {name: badfmt, path: x.txt, format: csv, category: x}
            - {name: nocat, path: x.txt, format: domains}
            - {name: ut, url: "https://x.example/a.tar.gz", format: ut1, category: x}
            - {name: m, path: x.txt, format: hosts, category: x, match: glob, usage: grey}
            - {name: u, url: "ftp://x.example/list", format: hosts, category: x}
            - {name: k, path: x.txt, format: hosts, category: x, refresh: 1h}
        """,
        ["2: blocklists.refresh: 0 must be longer than 0",
         "3: blocklists.bundled: expected true or false, not 'maybe'",
         "6: blocklists source name 'ads' is already used (line 5)",
         "7: blocklists source 'two': give exactly one of url:, path: or domains: (url, path "
         "given)",
         "8: blocklists source 'none': give exactly one of url:, path: or domains: (none given)",
         "9: a blocklists source needs name:",
         "10: blocklists source 'nofmt': needs format: (domains, hosts, adblock, ut1)",
         "11: blocklists source 'badfmt': format: expected domains | hosts | adblock | ut1, "
         "not 'csv'",
         "12: blocklists source 'nocat': needs category:",
         "13: blocklists source 'ut': a ut1 source brings its own categories",
         "14: blocklists source 'm': usage: expected black | white, not 'grey'",
         "14: blocklists source 'm': match: expected default | suffix, not 'glob'",
         "15: blocklists source 'u': url: 'ftp://x.example/list' is not an http:// or https:// URL",
         "16: unknown key 'refresh' in a blocklists source"],
        id="blocklists",
    ),
]


@pytest.mark.parametrize(("text", "expected"), ERROR_CASES)
def test_errors(tmp_path, text, expected):
    errors = errors_of(tmp_path, text)
    assert len(errors) == len(expected), errors
    for error, wanted in zip(errors, expected):
        assert error.startswith(wanted), (error, wanted)


def test_error_names_the_file(tmp_path):
    path = write(tmp_path, "dns:\n  block_ttl: x\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}:2: dns.block_ttl: expected a whole number")


def test_yaml_errors_and_missing_files(tmp_path):
    path = write(tmp_path, "dns:\n  block_ttl: 1\n  block_ttl: 2\n")
    with pytest.raises(ConfigError, match=r"classguard\.yaml:3: duplicate key 'block_ttl'"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_store_error_hides_the_url(tmp_path):
    errors = errors_of(tmp_path, 'store: "mysql://user:secret@db/0"\n')
    assert "secret" not in errors[0]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("udp://9.9.9.9", ("udp", "9.9.9.9", 53, None)),
        ("udp://9.9.9.9:5300", ("udp", "9.9.9.9", 5300, None)),
        ("tcp://[2001:db8::1]:53", ("tcp", "2001:db8::1", 53, None)),
        ("tls://9.9.9.9#dns.quad9.net", ("tls", "9.9.9.9", 853, "dns.quad9.net")),
        ("tls://9.9.9.9", ("tls", "9.9.9.9", 853, None)),
        ("tls://dns.quad9.net:8853", ("tls", "dns.quad9.net", 8853, "dns.quad9.net")),
        ("https://dns.google/dns-query", ("https", "dns.google", 443, "dns.google")),
        ("HTTPS://Dns.Example:8443/q", ("https", "dns.example", 8443, "dns.example")),
    ],
)
def test_parse_upstream(url, expected):
    assert parse_upstream(url) == expected


@pytest.mark.parametrize(
    "url",
    ["9.9.9.9", "ftp://x", "udp://", "udp://9.9.9.9:0", "udp://9.9.9.9:x", "udp://[bad]:53",
     "udp://user@9.9.9.9", "udp://9.9.9.9/path", "udp://9.9.9.9#sni", "tls://9.9.9.9#bad sni",
     "udp://bad_host!:53"],
)
def test_parse_upstream_refuses(url):
    with pytest.raises(ValueError, match=r"\S"):
        parse_upstream(url)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:1053", ("127.0.0.1", 1053)), ("[::1]:53", ("::1", 53)),
     ("0.0.0.0:0", ("0.0.0.0", 0)), ("[::]:8053", ("::", 8053))],
)
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    "text", ["1053", "127.0.0.1", "::1:53", "[::1]53", "[10.0.0.1]:53", "host:53", "1.2.3.4:-1",
             "1.2.3.4:65536"],
)
def test_parse_listen_refuses(text):
    with pytest.raises(ValueError):
        parse_listen(text)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(90, 90.0), ("90", 90.0), ("90s", 90.0), ("30m", 1800.0), ("24h", 86400.0), ("1d", 86400.0),
     ("1h30m", 5400.0), ("500ms", 0.5), (2.5, 2.5)],
)
def test_parse_duration(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "1w", "h", "-5", True, "1.2.3s", [1]])
def test_parse_duration_refuses(value):
    with pytest.raises(ValueError):
        parse_duration(value)


def test_upstream_ad_is_clear_or_trust(tmp_path):
    assert load_config(write(tmp_path, "dns: {upstream_ad: trust}\n")).dns.upstream_ad == "trust"
    assert load_config(write(tmp_path, "dns: {}\n")).dns.upstream_ad == "clear"
    assert any("upstream_ad" in error for error in errors_of(tmp_path, "dns: {upstream_ad: yes}\n"))
