"""The dashboard in a real headless Chromium (Playwright driving Debian's `chromium`) against a
real `classguard serve`: a teacher pauses the class and a DNS query from it is blocked, allows a
site and sees it resolve, resumes; an admin sees a class form's error by its field, and gives a
teacher another class on the Users page; both languages render. Playwright's own waiting, no sleeps."""

from __future__ import annotations

import asyncio
import re

import pytest
from playwright.async_api import async_playwright, expect

from tests.browser import chromium_path, log_in, serve_school
from tests.serving import addresses, ask

BLOCKED = ["0.0.0.0"]
EXAMPLE = ["93.184.215.14"]  # the test upstream's example.com
OTHER = ["192.0.2.44"]


@pytest.fixture
async def school(tmp_path, upstream):
    server, base = await serve_school(tmp_path, upstream.url)
    try:
        yield server, base
    finally:
        await server.stop()


@pytest.fixture
async def browser():
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium_path(), headless=True)
        context = await browser.new_context()
        context.set_default_timeout(15_000)  # a failure shows in seconds, not minutes
        try:
            yield context
        finally:
            await browser.close()


async def answer_becomes(port: int, name: str, expected: list[str]) -> None:
    """Ask from the class's address (127.0.0.2) until the answer is `expected` (a change applies
    at once; the loop only absorbs a loaded machine's delays)."""
    seen = None
    for _ in range(50):
        seen = addresses(await ask(port, name, "127.0.0.2", timeout=2.0))
        if seen == expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name}: {seen}, not {expected}")


async def test_teacher_pauses_allows_and_resumes_the_class(school, browser, upstream):
    server, base = school
    upstream.add("other.example", "A", OTHER[0])
    page = await browser.new_page()
    await log_in(page, base, "tom")
    await expect(page.locator("html")).to_have_attribute("lang", "fr")
    await page.click("a[href='/classes/pupils']")
    await expect(page.locator("#class-status")).to_have_text("Ouverte")
    await expect(page.locator("text=Catégories et applications bloquées")).to_contain_text("Adulte")
    await answer_becomes(server.port, "example.com", EXAMPLE)

    await page.click("button:has-text('Pause 15 min')")
    # In words, in the school's time: "En pause jusqu'à 10 h 45" (or "demain 0 h 05" near midnight).
    await expect(page.locator("#class-status")).to_have_text(
        re.compile(r"^En pause jusqu'à (demain )?\d{1,2} h \d\d$"))
    await answer_becomes(server.port, "example.com", BLOCKED)

    allow = page.locator("#allow-form")
    await allow.locator("input[name=target]").fill("example.com")
    await allow.locator("input[name=minutes]").fill("10")
    await allow.locator("button").click()
    await expect(page.locator("text=Autorisé : example.com")).to_be_visible()
    await answer_becomes(server.port, "example.com", EXAMPLE)
    await answer_becomes(server.port, "other.example", BLOCKED)  # the rest is still paused

    await page.click("#resume")
    await expect(page.locator("#class-status")).to_have_text("Ouverte")
    await answer_becomes(server.port, "other.example", OTHER)


async def test_admin_sees_an_invalid_network_next_to_the_field_in_both_languages(school, browser):
    _server, base = school
    page = await browser.new_page()
    await log_in(page, base, "alice")
    await page.click("nav a[href='/classes']")
    await page.click("a[href='/classes/new']")
    await page.fill("#field-id", "cm1-b")
    await page.fill("#field-name", "CM1 B")
    await page.fill("#field-networks", "10.0.0.300/24")
    await page.click("form.card button:has-text('Enregistrer')")
    error = page.locator("[data-field=networks] .error")
    await expect(error).to_contain_text("réseau invalide '10.0.0.300/24'")  # in her language
    await expect(page.locator("#field-name")).to_have_value("CM1 B")

    await page.fill("#field-networks", "10.0.9.0/24")
    await page.click("form.card button:has-text('Enregistrer')")
    await expect(page.locator("h1")).to_have_text("CM1 B (cm1-b)")
    await expect(page.locator(".notice")).to_have_text("Classe enregistrée ; le serveur l'applique déjà.")

    await page.click("button[name=language][value=en]")
    await expect(page.locator("html")).to_have_attribute("lang", "en")
    await expect(page.locator(".notice")).to_have_count(0)
    await expect(page.locator("h2").first).to_have_text("Right now")
    for path, heading in (("/", "Overview"), ("/classes", "Classes"), ("/devices", "Devices"),
                          ("/lists", "Blocklists"), ("/why", "Why is this blocked?"),
                          ("/audit", "Audit log"), ("/users", "Users")):
        await page.goto(base + path)
        await expect(page.locator("h1")).to_have_text(heading)
    await expect(page.locator("table")).to_contain_text(re.compile("alice"))

    # the Users page: the admin gives tom a second class (plain form, redirect, notice)
    await page.click("a[href='/users/tom']")
    await expect(page.locator("h1")).to_have_text("User tom")
    await page.check("input[name=classes][value=staff]")
    await page.click("form.card button:has-text('Save')")
    await expect(page.locator(".notice")).to_have_text("User saved.")
    await expect(page.locator("tr", has_text="tom")).to_contain_text("pupils, staff")
