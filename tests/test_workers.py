"""`classguard serve --workers 2`: two processes on one port, both applying every change."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import dns.exception

from tests.conftest import ede
from tests.serving import CLASSGUARD, SCHOOL_POLICY, addresses, ask, cli, write_school


async def answers_from_many_ports(port: int, name: str, count: int = 40) -> list:
    """Each query from a new socket (a new source port), so SO_REUSEPORT spreads them."""
    return await asyncio.gather(*(ask(port, name, "127.0.0.2", timeout=2) for _ in range(count)))


async def test_two_workers_share_the_port_and_both_apply_a_policy_change(tmp_path, upstream):
    port = write_school(tmp_path, upstream.url)
    process = await asyncio.create_subprocess_exec(
        CLASSGUARD, "serve", "--workers", "2", cwd=tmp_path, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={**os.environ, "CLASSGUARD_CONFIG": ""})
    try:
        assert len(await _serving(port, process)) == 2  # both workers up, with their lists
        before = await answers_from_many_ports(port, "example.com")
        assert all(addresses(answer) == ["93.184.215.14"] for answer in before)
        (tmp_path / "stricter.yaml").write_text(SCHOOL_POLICY.replace("deny: [denied.example]",
                                                                      "deny: [denied.example, example.com]"))
        imported = await cli(tmp_path, "policy", "import", "stricter.yaml")
        assert imported.returncode == 0, imported.stderr
        await asyncio.sleep(1.5)  # every worker follows the store within a second
        after = await answers_from_many_ports(port, "example.com")
        assert [ede(answer) for answer in after] == [[(15, "deny")]] * len(after)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 20)
    text = output.decode()
    assert process.returncode == 0, text
    assert "Traceback" not in text and text.count("worker") >= 2


async def _serving(port: int, process) -> list[int]:
    """Wait until both workers answer; their pids."""
    for _ in range(150):
        try:
            answers = await answers_from_many_ports(port, "adult.example", 10)
            if all(ede(answer) == [(15, "category:adult")] for answer in answers):
                break
        except dns.exception.Timeout:
            pass
        await asyncio.sleep(0.1)
    return await _children(process.pid)


async def _children(pid: int) -> list[int]:
    listing = await asyncio.create_subprocess_exec("pgrep", "-P", str(pid), stdout=asyncio.subprocess.PIPE)
    return [int(child) for child in (await listing.communicate())[0].split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.split(")")[-1].split()[0] != "Z"  # a zombie is gone, only not reaped yet


async def _start_two_workers(tmp_path, upstream):
    port = write_school(tmp_path, upstream.url)
    process = await asyncio.create_subprocess_exec(
        CLASSGUARD, "serve", "--workers", "2", cwd=tmp_path, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={**os.environ, "CLASSGUARD_CONFIG": ""})
    workers = await _serving(port, process)
    assert len(workers) == 2
    return port, process, workers


async def test_a_sigterm_during_the_restart_delay_stops_everything(tmp_path, upstream):
    """kill -9 of a worker, then SIGTERM 0.3 s later, inside the supervisor's restart delay:
    it once started a new worker and never exited (issue 24)."""
    port, process, workers = await _start_two_workers(tmp_path, upstream)
    os.kill(workers[0], signal.SIGKILL)
    await asyncio.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.communicate(), 10)
    finally:
        if process.returncode is None:
            process.kill()
    assert not any(_alive(pid) for pid in workers)


async def test_sighup_leaves_the_server_serving_and_a_killed_supervisor_takes_its_workers(
        tmp_path, upstream):
    """SIGHUP once killed the supervisor and left its workers serving as orphans, so that a
    new `serve` crash-looped on the ports taken (issue 24)."""
    port, process, workers = await _start_two_workers(tmp_path, upstream)
    process.send_signal(signal.SIGHUP)
    await asyncio.sleep(0.5)
    assert process.returncode is None and all(_alive(pid) for pid in workers)
    answers = await answers_from_many_ports(port, "example.com", 10)
    assert all(addresses(answer) == ["93.184.215.14"] for answer in answers)
    process.kill()  # SIGKILL: no chance to stop the workers itself
    await process.wait()
    for _ in range(50):
        if not any(_alive(pid) for pid in workers):
            break
        await asyncio.sleep(0.1)
    assert not any(_alive(pid) for pid in workers)


async def test_workers_share_every_listener(tmp_path, upstream):
    """`serve --workers 2` with DoH, DoT, metrics and the dashboard configured: the DoH site once
    bound without SO_REUSEPORT, the second worker crash-looped and the server exited 1
    (issue 24). Every listener is now shared by the workers, and each answers."""
    import ssl
    import urllib.request

    import trustme

    from tests.ports import free_port

    port = write_school(tmp_path, upstream.url)
    cert = trustme.CA().issue_cert("dot.school.example", "*.dot.school.example")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    doh, dot, metrics, board = (free_port() for _ in range(4))
    with (tmp_path / "classguard.yaml").open("a") as config:
        config.write(f"doh: {{listen: \"127.0.0.1:{doh}\"}}\n"
                     f"dot: {{listen: \"127.0.0.1:{dot}\", hostname: dot.school.example}}\n"
                     f"tls: {{cert: cert.pem, key: key.pem}}\n"
                     f"metrics: {{listen: \"127.0.0.1:{metrics}\"}}\n"
                     f"dashboard: {{listen: \"127.0.0.1:{board}\"}}\n")
    process = await asyncio.create_subprocess_exec(
        CLASSGUARD, "serve", "--workers", "2", cwd=tmp_path, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={**os.environ, "CLASSGUARD_CONFIG": ""})
    try:
        workers = await _serving(port, process)
        await asyncio.sleep(1.5)  # a worker that failed to bind would have died and restarted
        assert process.returncode is None
        assert workers == await _children(process.pid) and len(workers) == 2

        def get(url: str) -> int:
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            with urllib.request.urlopen(url, timeout=3, context=context) as answer:
                return answer.status

        assert await asyncio.to_thread(get, f"http://127.0.0.1:{metrics}/healthz") == 200
        assert await asyncio.to_thread(get, f"http://127.0.0.1:{board}/login") == 200
        reader, writer = await asyncio.open_connection("127.0.0.1", dot)  # TCP accepted
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", doh)
        writer.close()
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 20)
    text = output.decode()
    assert process.returncode == 0, text
    assert "Address already in use" not in text and "exited" not in text, text


async def test_lists_update_reaches_every_process_of_every_server_on_the_state_dir(tmp_path, upstream):
    """`classguard lists update` with `serve --workers 2` and a second server on the same
    state_dir: when the control socket was not worker 0's, the CLI compiled the lists itself and
    worker 0 (and the whole second server) kept the old ones (issue 24). Every process now
    follows the compiled file."""
    port = write_school(tmp_path, upstream.url)
    second = tmp_path / "second"
    second.mkdir()
    other_port = write_school(second, upstream.url)
    config = (second / "classguard.yaml").read_text()
    (second / "classguard.yaml").write_text(config.replace("state_dir: state",
                                                           f"state_dir: {tmp_path / 'state'}"))
    (second / "adult.txt").unlink()
    (second / "adult.txt").symlink_to(tmp_path / "adult.txt")
    first = await asyncio.create_subprocess_exec(
        CLASSGUARD, "serve", "--workers", "2", cwd=tmp_path, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={**os.environ, "CLASSGUARD_CONFIG": ""})
    other = None
    try:
        assert len(await _serving(port, first)) == 2
        other = await asyncio.create_subprocess_exec(
            CLASSGUARD, "serve", cwd=second, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env={**os.environ, "CLASSGUARD_CONFIG": ""})
        await _serving(other_port, other)
        new = [f"new{index}.example" for index in range(10)]
        (tmp_path / "adult.txt").write_text("adult.example\n" + "".join(f"{name}\n" for name in new))
        updated = await cli(tmp_path, "lists", "update")
        assert updated.returncode == 0, updated.stderr
        blocked: list = []
        for _ in range(50):  # within a few seconds of `lists update` returning
            blocked = [ede(answer) for server_port in (port, other_port) for name in new
                       for answer in await answers_from_many_ports(server_port, name, 4)]
            if all(codes == [(15, "category:adult")] for codes in blocked):
                break
            await asyncio.sleep(0.1)
        assert all(codes == [(15, "category:adult")] for codes in blocked)
    finally:
        for process in (first, other):
            if process is not None and process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(process.communicate(), 20)
