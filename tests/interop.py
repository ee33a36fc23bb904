"""Third-party DNS programs driven by the interop tests: unbound as a forwarder, kdig as a client.

`make test` installs them from Debian when missing (knot-dnsutils, unbound); each runs bounded
in time, on 127.0.0.1, with its files in the test's tmp_path.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import textwrap
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message
import pytest

from tests.ports import free_port

START_TIMEOUT = 10.0


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:  # `make test` installs it; a bare pytest run says what is missing
        pytest.fail(f"{program} is not installed (make test installs it from Debian)")
    return path


@contextlib.asynccontextmanager
async def unbound_forwarder(folder: Path, classguard_port: int):
    """unbound forwarding everything to classguard with its client-subnet module, as pfSense and
    OPNsense run it: each client's address goes upstream as ECS /32. Yields unbound's port."""
    port = free_port()
    config = folder / "unbound.conf"
    config.write_text(textwrap.dedent(f"""\
        server:
          interface: 127.0.0.1
          port: {port}
          do-daemonize: no
          chroot: ""
          username: ""
          directory: "{folder}"
          pidfile: "{folder}/unbound.pid"
          use-syslog: no
          logfile: ""
          verbosity: 1
          do-ip6: no
          num-threads: 1
          do-not-query-localhost: no
          access-control: 127.0.0.0/8 allow
          outgoing-interface: 127.0.0.1
          module-config: "subnetcache iterator"
          send-client-subnet: 127.0.0.1
          max-client-subnet-ipv4: 32
        remote-control:
          control-enable: no
        forward-zone:
          name: "."
          forward-addr: 127.0.0.1@{classguard_port}
        """))
    log = (folder / "unbound.log").open("wb")
    process = await asyncio.create_subprocess_exec(need("unbound"), "-d", "-c", str(config),
                                                   stdout=log, stderr=log)
    try:
        await _answering(port, process)
        yield port
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()


async def _answering(port: int, process) -> None:
    """Until unbound answers `localhost.` (one of its own local zones), within START_TIMEOUT."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    while True:
        if process.returncode is not None:
            raise RuntimeError(f"unbound exited with {process.returncode}")
        try:
            await dns.asyncquery.udp(dns.message.make_query("localhost.", "A"), "127.0.0.1",
                                     port=port, timeout=0.2)
            return
        except (dns.exception.Timeout, OSError):
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)


async def kdig(*args: str, timeout: float = 10.0) -> str:
    """kdig's output for `args` (bounded in time)."""
    process = await asyncio.create_subprocess_exec(need("kdig"), *args, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return out.decode()
