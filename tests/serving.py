"""`classguard serve` and the CLI as real processes in a temporary school folder, for tests."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message

from tests.conftest import LOGGED, ede
from tests.ports import free_port, reusable_port  # noqa: F401 (free_port: tests import it from here)

CLASSGUARD = str(Path(sys.executable).with_name("classguard"))

SCHOOL_POLICY = """\
always_allow: [mdm.example.net]
locked_categories: [adult]
classes:
  pupils:
    name: "CM2 A"
    networks: ["127.0.0.2/32"]
    block: [adult]
    deny: [denied.example]
  staff:
    networks: ["127.0.0.3/32"]
"""


ADULT_SOURCE = "{name: adult, path: adult.txt, format: domains, category: adult}"


def write_school(folder: Path, upstream_url: str, policy: str = SCHOOL_POLICY,
                 source: str = ADULT_SOURCE) -> int:
    """A config, a policy and a one-category list in `folder` (`source`: the list source, whose
    file the caller writes when it is not the default adult.txt); returns the DNS port it uses:
    free for UDP and TCP both, below the ephemeral range (no outgoing socket can take it)."""
    port = reusable_port()
    (folder / "policies.yaml").write_text(policy)
    if source == ADULT_SOURCE:
        (folder / "adult.txt").write_text("adult.example\n")
    (folder / "classguard.yaml").write_text(textwrap.dedent(f"""\
        timezone: Europe/Paris
        policies: policies.yaml
        state_dir: state
        dns:
          listen: ["127.0.0.1:{port}"]
          upstreams: ["{upstream_url}"]
          upstream_timeout: 1
        blocklists:
          bundled: false
          sources:
            - {source}
        """))
    return port


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


async def cli(folder: Path, *args: str, stdin: str | None = None) -> Result:
    """Run `classguard ARGS` in `folder` without blocking the event loop (a test upstream runs on it)."""
    process = await asyncio.create_subprocess_exec(
        CLASSGUARD, *args, cwd=folder, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "CLASSGUARD_CONFIG": ""},
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL)
    stdout, stderr = await asyncio.wait_for(
        process.communicate(stdin.encode() if stdin is not None else None), 60)
    return Result(process.returncode, stdout.decode(), stderr.decode())


async def ask(port: int, name: str, source: str, timeout: float = 1.0) -> dns.message.Message:
    query = dns.message.make_query(name, "A", use_edns=0)
    return await dns.asyncquery.udp(query, "127.0.0.1", port=port, source=source, timeout=timeout)


def addresses(message: dns.message.Message) -> list[str]:
    return [item.to_text() for rrset in message.answer for item in rrset if rrset.rdtype in (1, 28)]


@dataclass
class Server:
    folder: Path
    port: int
    process: asyncio.subprocess.Process
    output: list[str] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return self.folder / "state"

    async def stop(self) -> str:
        """SIGTERM, and the whole log; the process must exit 0 without a traceback."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            output, _ = await asyncio.wait_for(self.process.communicate(), 15)
        except asyncio.TimeoutError:
            self.process.kill()
            output, _ = await self.process.communicate()
            raise AssertionError("classguard serve did not stop within 15 s of SIGTERM:\n"
                                 + output.decode()[-4000:]) from None
        text = output.decode()
        LOGGED.append(text)
        assert self.process.returncode == 0, text
        assert "Traceback" not in text, text
        return text


async def start_server(folder: Path, port: int, prefix: tuple[str, ...] = ()) -> Server:
    """`classguard serve` in `folder`, once its lists are loaded and its control socket is up;
    `prefix`: a command that runs it (e.g. prlimit)."""
    process = await asyncio.create_subprocess_exec(
        *prefix, CLASSGUARD, "serve", cwd=folder, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={**os.environ, "CLASSGUARD_CONFIG": ""})
    server = Server(folder, port, process)
    for _ in range(150):
        if process.returncode is not None:
            break
        if (folder / "state" / "control.sock").exists():
            try:
                answer = await ask(port, "adult.example", "127.0.0.2", timeout=0.2)
            except dns.exception.Timeout:
                answer = None
            if answer is not None and addresses(answer) == ["0.0.0.0"] \
                    and ede(answer) == [(15, "category:adult")]:
                return server
        await asyncio.sleep(0.1)
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    output, _ = await asyncio.wait_for(process.communicate(), 15)
    raise AssertionError(f"classguard serve did not become ready:\n{output.decode()}")
