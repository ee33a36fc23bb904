"""The command line as an admin runs it: real processes, real files, real sockets."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import textwrap
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import pytest

from tests.conftest import ede
from tests.serving import CLASSGUARD, free_port

TWO_CLASSES = """\
always_allow: [apple.com]
classes:
  cm2-a:
    name: "CM2 A"
    networks: ["127.0.0.2/32"]
    block: [adult, social_networks]
    safe_search: strict
  staff:
    networks: ["127.0.0.3/32"]
    block: [malware]
"""


def run(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CLASSGUARD, *args], cwd=cwd, capture_output=True, text=True, input=stdin,
                          timeout=60, env={**os.environ, "CLASSGUARD_CONFIG": ""})


@pytest.fixture
def school(tmp_path: Path) -> Path:
    (tmp_path / "policies.yaml").write_text(TWO_CLASSES)
    (tmp_path / "social.txt").write_text("# a local list\nsocial.example\nbad line here\n")
    (tmp_path / "classguard.yaml").write_text(textwrap.dedent("""\
        policies: policies.yaml
        state_dir: state
        dns:
          listen: ["127.0.0.1:1053"]
          upstreams: ["udp://127.0.0.1:9"]
        blocklists:
          sources:
            - {name: local-social, path: social.txt, format: domains, category: social_networks}
        """))
    return tmp_path


def test_policy_validate_accepts_a_good_file(school):
    result = run("policy", "validate", "policies.yaml", cwd=school)
    assert result.returncode == 0, result.stderr
    assert "policies.yaml: ok" in result.stdout


def test_policy_validate_reports_file_line_and_reason(school):
    (school / "bad.yaml").write_text(textwrap.dedent("""\
        classes:
          cm2-a:
            networks: ["10.12.3.5/24"]
            block: [adultt]
            safe_search: sometimes
        """))
    result = run("policy", "validate", "bad.yaml", cwd=school)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, result.stderr
    assert lines[0].startswith("bad.yaml:3: ") and "host bits" in lines[0]
    assert lines[1].startswith("bad.yaml:4: ") and "adultt" in lines[1]
    assert lines[2].startswith("bad.yaml:5: ") and "sometimes" in lines[2]


def test_lists_update_prints_counts_per_category_and_bad_lines(school):
    result = run("lists", "update", cwd=school)
    assert result.returncode == 0, result.stderr
    assert "local-social\tsocial_networks\t1\t1\t0" in result.stdout
    assert "starter\tadult\t" in result.stdout
    assert (school / "state" / "lists.bin").exists()


def test_check_explains_a_block_and_exits_zero(school):
    run("lists", "update", cwd=school)
    result = run("check", "www.social.example", "--client", "127.0.0.2", cwd=school)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "class: cm2-a (network 127.0.0.2/32)" in out
    assert "decision: block" in out
    assert "step: 9 category" in out
    assert "rule: category social_networks: social.example" in out
    assert "EDE text: category:social_networks" in out
    other = run("check", "www.social.example", "--class", "staff", cwd=school)
    assert "decision: resolve" in other.stdout and "step: 11 forward" in other.stdout


def test_check_for_an_unknown_client_says_refused(school):
    result = run("check", "example.com", "--client", "192.0.2.1", cwd=school)
    assert result.returncode == 0
    assert "unknown client" in result.stdout and "refused" in result.stdout


def test_errors_are_one_line_on_stderr_with_exit_1(school):
    (school / "broken.yaml").write_text("dns:\n  listen: [\"nowhere\"]\n")
    result = run("-c", "broken.yaml", "check", "x.example", "--class", "cm2-a", cwd=school)
    assert result.returncode == 1
    assert result.stderr.startswith("classguard: broken.yaml:2: dns.listen")
    assert len(result.stderr.splitlines()) == 1
    missing = run("check", "x.example", "--class", "nope", cwd=school)
    assert missing.returncode == 1 and "nope" in missing.stderr and len(missing.stderr.splitlines()) == 1


async def test_serve_answers_filters_and_stops_cleanly(school, upstream):
    port = free_port()
    config = (school / "classguard.yaml").read_text()
    config = config.replace("127.0.0.1:1053", f"127.0.0.1:{port}").replace("udp://127.0.0.1:9", upstream.url)
    (school / "classguard.yaml").write_text(config)
    process = await asyncio.create_subprocess_exec(CLASSGUARD, "serve", cwd=school,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        async def ask(name: str, source: str) -> dns.message.Message:
            query = dns.message.make_query(name, "A", use_edns=0)
            return await dns.asyncquery.udp(query, "127.0.0.1", port=port, source=source, timeout=1)

        for _ in range(100):
            try:
                answer = await ask("www.social.example", "127.0.0.2")
                if ede(answer) != [(15, "lists_unavailable")]:
                    break
            except dns.exception.Timeout:
                pass
            await asyncio.sleep(0.1)
        assert [item.to_text() for rrset in answer.answer for item in rrset] == ["0.0.0.0"]
        assert ede(answer) == [(15, "category:social_networks")]
        allowed = await ask("example.com", "127.0.0.3")
        assert [item.to_text() for rrset in allowed.answer for item in rrset] == ["93.184.215.14"]
        tcp = await dns.asyncquery.tcp(dns.message.make_query("example.com", "A"), "127.0.0.1", port=port,
                                       source="127.0.0.3", timeout=2)
        assert tcp.rcode() == dns.rcode.NOERROR and tcp.answer
        refused = await ask("example.com", "127.0.0.9")
        assert refused.rcode() == dns.rcode.REFUSED
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode == 0, output.decode()
    assert b"Traceback" not in output
