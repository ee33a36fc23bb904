"""A school with its dashboard on, served by a real `classguard serve`, and Debian's chromium
driven by Playwright: shared by tests/test_browser.py and `make screenshots`."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import aiohttp

from store.embedded import EmbeddedStore
from tests.dashboard_fixtures import PASSWORD, quick_user
from tests.serving import SCHOOL_POLICY, Server, free_port, start_server, write_school

# Playwright drives the distribution's browser (`make test` apt-installs `chromium`): never a
# browser build of its own (`playwright install` is not used).
CHROMIUM_NAMES = ("chromium", "chromium-browser")


def chromium_path() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError("no chromium on PATH: `make test` installs it (apt-get install chromium)")


async def serve_school(folder: Path, upstream_url: str, policy: str = SCHOOL_POLICY, *,
                       extra_config: str = "") -> tuple[Server, str]:
    """`classguard serve` with `dashboard:` on a free port and two accounts: alice (admin) and
    tom (teacher of `pupils`), both with tests.dashboard_fixtures.PASSWORD; (server, base URL)."""
    port = write_school(folder, upstream_url, policy)
    dashboard_port = free_port()
    with (folder / "classguard.yaml").open("a") as config:
        config.write(f'dashboard: {{listen: "127.0.0.1:{dashboard_port}"}}\n{extra_config}')
    store = EmbeddedStore(folder / "state")
    for user in (quick_user("alice", "admin"), quick_user("tom", "teacher", ("pupils",))):
        await store.put_user(user, actor="test", action="user.add")
    server = await start_server(folder, port)
    base = f"http://127.0.0.1:{dashboard_port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            try:
                async with session.get(base + "/login") as response:
                    if response.status == 200:
                        return server, base
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    await server.stop()
    raise AssertionError("the dashboard did not answer on " + base)


async def log_in(page, base: str, name: str, password: str = PASSWORD) -> None:
    """The login form, as a person fills it; waits for the overview."""
    await page.goto(base + "/login")
    await page.fill("input[name=name]", name)
    await page.fill("input[name=password]", password)
    await page.click("main form button")
    await page.wait_for_url(base + "/")
