"""`make screenshots`: the dashboard's main pages on a demo school, as a tablet shows them, into
docs/screenshots/*.png (docs/dashboard.md shows them). Run from the repository's root."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from playwright.async_api import async_playwright

from tests.browser import chromium_path, log_in, serve_school
from tests.nameserver import FakeNameserver
from tests.serving import ask

OUT = Path("docs/screenshots")
TABLET = {"width": 1024, "height": 768}  # an iPad held landscape

DEMO_POLICY = """\
always_allow: [mdm.example.net]
locked_categories: [adult]
exceptions:
  - {from: 2026-12-19, to: 2027-01-04, name: "vacances de Noël"}
  - {date: 2027-05-01, name: "fête du Travail"}
classes:
  pupils:
    name: "CM2 A, école Jean Jaurès"
    school: jean-jaures
    networks: ["127.0.0.2/32"]
    block: [adult]
    deny: [denied.example]
    safe_search: strict
    schedule:
      - {days: mon-fri, from: "08:30", to: "16:30", block: [adult], school_days_only: true}
      - {days: all, from: "21:00", to: "07:00", closed: true}
  staff:
    name: "Salle des maîtres"
    networks: ["127.0.0.3/32"]
"""

EXTRA_CONFIG = 'doh: {listen: "127.0.0.1:0", public_url: "https://dns.ecole.example/dns-query"}\n'


async def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    upstream = FakeNameserver()
    upstream.add("example.com", "A", "93.184.215.14")
    upstream.add("adult.example", "A", "198.51.100.1")
    await upstream.start()
    with tempfile.TemporaryDirectory() as folder:
        server, base = await serve_school(Path(folder), upstream.url, DEMO_POLICY,
                                          extra_config=EXTRA_CONFIG)
        try:
            for name in ("adult.example", "denied.example", "www.denied.example", "adult.example"):
                await ask(server.port, name, "127.0.0.2")  # something for "most blocked today"
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path=chromium_path())
                await shoot(browser, base)
                await browser.close()
        finally:
            await server.stop()
            await upstream.stop()


async def shoot(browser, base: str) -> None:
    async def snap(page, name: str) -> None:
        await page.screenshot(path=str(OUT / f"{name}.png"), full_page=True)
        print(OUT / f"{name}.png")

    teacher = await (await browser.new_context(viewport=TABLET)).new_page()
    await teacher.goto(base + "/login")
    await snap(teacher, "login")
    await log_in(teacher, base, "tom")
    await teacher.goto(base + "/classes/pupils")
    await teacher.click("button:has-text('Pause 30 min')")
    allow = teacher.locator("#allow-form")
    await allow.locator("input[name=target]").fill("lumni.fr")
    await allow.locator("button").click()
    await snap(teacher, "class-teacher")
    await teacher.click("button[name=language][value=en]")
    await snap(teacher, "class-teacher-en")

    admin = await (await browser.new_context(viewport=TABLET)).new_page()
    await log_in(admin, base, "alice")
    await snap(admin, "overview")
    await admin.goto(base + "/classes/new")
    await admin.fill("#field-id", "cm1-b")
    await admin.fill("#field-name", "CM1 B")
    await admin.fill("#field-networks", "10.0.0.300/24")
    await admin.click("form.card button:has-text('Enregistrer')")
    await snap(admin, "class-form-error")
    await admin.goto(base + "/devices")
    await admin.fill("input[name=id]", "tablette-0042")
    await admin.click("form[action='/devices/enrol'] button")
    await snap(admin, "device-enrolled")
    await admin.goto(base + "/why?name=adult.example&class=pupils")
    await snap(admin, "why")
    for path, name in (("/lists", "lists"), ("/audit", "audit")):
        await admin.goto(base + path)
        await snap(admin, name)
    await admin.goto(base + "/users/tom")  # a teacher left without a class: refused by the field
    await admin.uncheck("input[name=classes][value=pupils]")
    await admin.click("form.card button:has-text('Enregistrer')")
    await snap(admin, "user-edit")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
