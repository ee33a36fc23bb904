""""Pourquoi bloqué ?" for one tablet (issue 22, item 15): by its device id or its address, at a
time, with the same answer as the server gives that tablet (its screen time included)."""

from __future__ import annotations

import time

from tests.conftest import PUPILS, ede
from tests.dashboard_fixtures import open_dashboard

POLICY = """\
classes:
  pupils:
    name: "CM2 A"
    networks: ["127.0.0.2/32"]
    block: [adult]
  minutes:
    name: "CE1 B"
    networks: ["127.0.0.4/32"]
    screen_time: {daily_minutes: 2}
devices:
  tablet-2: {class: minutes, addresses: ["127.0.0.4"]}
"""


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_why_answers_for_a_tablet_as_the_server_does(make_resolver):
    clock = Clock(time.time())
    async with open_dashboard(make_resolver, policy=POLICY, timezone="Europe/Paris",
                              clock=clock) as board:
        for _ in range(3):  # tablet-2 spends three minutes of its two
            await board.resolver.query("example.com", source="127.0.0.4")
            clock.now += 60
        clock.now -= 60
        served = await board.resolver.query("example.com", source="127.0.0.4")
        assert ede(served) == [(15, "screen_time")]
        await board.login("alice")
        for who in ("tablet-2", "127.0.0.4"):
            page = await board.client.get("/why", params={"name": "example.com", "who": who})
            text = await page.text()
            assert page.status == 200, text
            assert "Reconnu comme</td><td>tablet-2 (CE1 B)" in text
            assert "screen_time" in text and 'class="card answer blocked"' in text
        as_class = await board.client.get("/why", params={"name": "example.com", "class": "minutes"})
        assert 'class="card answer resolves"' in await as_class.text()  # a class spends no minute
        pupil = await board.client.get("/why", params={"name": "example.com", "who": PUPILS})
        assert "network 127.0.0.2/32" in await pupil.text()


async def test_a_teacher_asks_about_her_classes_tablets_only(make_resolver):
    async with open_dashboard(make_resolver, policy=POLICY.replace("minutes:\n    name", "staff:\n    name")
                              .replace("class: minutes", "class: staff")) as board:
        await board.login("tom")  # a teacher of pupils
        other = await board.client.get("/why", params={"name": "example.com", "who": "tablet-2"})
        assert other.status == 403
        mine = await board.client.get("/why", params={"name": "adult.example", "who": PUPILS})
        assert mine.status == 200 and 'class="card answer blocked"' in await mine.text()
        wrong = await board.client.get("/why", params={"name": "example.com", "who": "tablette 9"})
        assert wrong.status == 400
        assert "ni un appareil inscrit ni une adresse IP" in await wrong.text()
