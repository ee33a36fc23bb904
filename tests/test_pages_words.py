"""The dashboard in words a teacher reads (issue 22, items 6-9, 14, 15): categories and services
by their names, the class's state and the "why" steps in sentences, dates in the school's time
zone and language, and no English left on the French pages. Same style as tests/test_pages.py."""

from __future__ import annotations

import re

from tests.dashboard_fixtures import PASSWORD, dashboard  # noqa: F401 (a fixture)


async def _login(dashboard, name: str, language: str = "fr") -> str:
    """Log in through the form, in `language`; the CSRF token the next page carries."""
    client = dashboard.client
    response = await client.post("/login", data={"name": name, "password": PASSWORD},
                                 allow_redirects=False)
    assert response.status == 303, await response.text()
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', await (await client.get("/")).text()).group(1)
    if language != "fr":
        await client.post("/language", data={"language": language, "csrf_token": csrf})
    return csrf


def _field(page: str, name: str) -> str:
    return re.search(rf'data-field="{re.escape(name)}">(.*?)</div>', page, re.S).group(1)


# --- item 6: categories and services in words ------------------------------------------------------

async def test_categories_are_shown_in_words_in_french_and_english(dashboard):
    client = dashboard.client
    csrf = await _login(dashboard, "alice")
    page = await (await client.get("/classes/pupils")).text()
    # safe_search: strict blocks the search engines without a safe mode too
    assert "<strong>Adulte, Jeux d&#x27;argent, Moteurs sans recherche sécurisée</strong>" in page
    form = await (await client.get("/classes/pupils/edit")).text()
    assert 'value="Adulte, Jeux d&#x27;argent"' in form
    assert "Moteurs sans recherche sécurisée" in _field(form, "block")  # the hint's known names
    await client.post("/language", data={"language": "en", "csrf_token": csrf})
    page = await (await client.get("/classes/pupils")).text()
    assert "<strong>Adult, Gambling, Search engines without safe search</strong>" in page
    assert 'value="Adult, Gambling"' in await (await client.get("/classes/pupils/edit")).text()


async def test_the_class_form_takes_words_and_ids_in_either_language(dashboard):
    client = dashboard.client
    csrf = await _login(dashboard, "alice")
    response = await client.post("/classes/new", data={
        "csrf_token": csrf, "version": "", "id": "cm1-b", "networks": "10.9.0.0/24",
        "block": "adulte, JEUX D’ARGENT; Social networks", "block_services": "Facebook et Messenger, tiktok",
        "schedule-0-days": "mon-fri", "schedule-0-from": "08:30", "schedule-0-to": "16:30",
        "schedule-0-block": "Moteurs sans recherche securisee"}, allow_redirects=False)
    assert response.status == 303, await response.text()
    item = dashboard.resolver.service.state.snapshot.policy.classes["cm1-b"]
    assert set(item.rules.block) == {"adult", "gambling", "social_networks"}
    assert set(item.rules.block_services) == {"facebook", "tiktok"}
    assert item.rules.schedule[0].block == ("nosafesearch",)


async def test_a_typo_gets_the_nearest_word_in_the_users_language(dashboard):
    client = dashboard.client
    csrf = await _login(dashboard, "alice")
    data = {"csrf_token": csrf, "version": "", "id": "cm1-b", "networks": "10.9.0.0/24",
            "block": "jeux", "block_services": "tiktk"}
    page = await (await client.post("/classes/new", data=data)).text()
    assert "catégorie inconnue « jeux » : vouliez-vous dire Jeux vidéo (games) ?" in _field(page, "block")
    assert "vouliez-vous dire TikTok (tiktok) ?" in _field(page, "block_services")
    await client.post("/language", data={"language": "en", "csrf_token": csrf})
    page = await (await client.post("/classes/new", data=data)).text()
    assert "unknown category &#x27;jeux&#x27;: did you mean Video games (games)?" in _field(page, "block")


def test_every_bundled_category_has_words_the_form_can_take_back():
    from blocklists.bundled import load_bundled
    from dashboard.i18n import words

    bundled = load_bundled()
    categories, services = words.categories(bundled), words.services(bundled)
    for name in bundled.categories:
        for language in ("fr", "en"):
            assert bundled.category_words.get(name, {}).get(language), (name, language)
    for known, names in ((categories, bundled.categories), (services, bundled.services)):
        for name in names:
            for language in ("fr", "en"):
                shown = known.word(name, language)
                assert not set(shown) & set(",;\n"), shown  # the form splits items on these
                assert known.ids(shown) == [name], (name, shown)


# --- item 8: dates in the school's time zone and language, plurals --------------------------------

PARIS = """\
classes:
  pupils:
    name: "CM2 A"
    networks: ["127.0.0.2/32"]
    block: [gambling]
"""


async def test_the_audit_log_says_a_pause_in_the_schools_time_and_language(make_resolver):
    import datetime as dt
    from zoneinfo import ZoneInfo

    from tests.dashboard_fixtures import open_dashboard

    async with open_dashboard(make_resolver, policy=PARIS, timezone="Europe/Paris") as opened:
        client = opened.client
        csrf = await _login(opened, "alice")
        response = await client.post("/classes/pupils/pause", data={"csrf_token": csrf, "minutes": "30"})
        assert response.status == 200
        state = opened.resolver.service.state
        until = dt.datetime.fromtimestamp(state.snapshot.overrides[0].until, ZoneInfo("Europe/Paris"))
        french_time = f"{until.hour} h {until.minute:02d}"  # what the teacher's watch says
        page = await response.text()
        assert f"En pause jusqu&#x27;à {french_time}" in page or "demain" in page
        audit = await (await client.get("/audit")).text()
        assert "+00:00" not in audit and "T" + until.strftime("%H") not in audit
        assert re.search(rf"<td>Pause ou autorisation</td><td></td><td>pause pour pupils jusqu&#x27;à "
                         rf"\w+ \d+ \w+ \d{{4}} à {french_time} \(id \w+\)</td>", audit), audit
        await client.post("/language", data={"language": "en", "csrf_token": csrf})
        audit = await (await client.get("/audit")).text()
        assert re.search(r"<td>Pause or allow</td><td></td><td>pause for pupils until \w+, \w+ \d+, "
                         r"\d{4} at \d+:\d\d\s[AP]M \(id \w+\)</td>", audit), audit


def test_plurals_and_ages_follow_each_languages_rules():
    from dashboard import i18n
    from dashboard.i18n import dates

    french, english = i18n.translator("fr"), i18n.translator("en")
    assert french("devices.imported", n=1) == "1 appareil inscrit"
    assert french("devices.imported", n=0) == "0 appareil inscrit"  # French counts 0 as one
    assert french("devices.imported", n=2) == "2 appareils inscrits"
    assert english("devices.imported", n=1) == "1 device enrolled"
    assert english("devices.imported", n=0) == "0 devices enrolled"
    assert dates.ago(86400 * 1.2, "fr") == "il y a 1 jour"
    assert dates.ago(86400 * 3, "fr") == "il y a 3 jours"
    assert dates.ago(86400, "en") == "1 day ago"
    now = 1_796_500_000  # a Saturday, 20:46 in Paris
    assert dates.moment(now + 36_000, "Europe/Paris", now, "fr") == "demain 6 h 46"
    assert dates.moment(now + 36_000, "Europe/Paris", now, "en") == "tomorrow 6:46\u202fAM"  # CLDR: a narrow no-break space
    assert dates.moment(now, "Europe/Paris", now, "fr", day=True) == "samedi 5 décembre 2026 à 20 h 46"


# --- item 7: the class's state and the "why" steps in sentences ------------------------------------

BEDTIME = """\
classes:
  pupils:
    name: "CM2 A"
    networks: ["127.0.0.2/32"]
    block: [gambling]
    schedule:
      - {days: all, from: "19:00", to: "07:00", closed: true}
"""


async def test_a_closed_class_says_so_in_words_in_french_and_english(make_resolver):
    import datetime as dt
    from zoneinfo import ZoneInfo

    from tests.dashboard_fixtures import open_dashboard

    evening = dt.datetime(2026, 12, 4, 21, 30, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
    async with open_dashboard(make_resolver, policy=BEDTIME, timezone="Europe/Paris",
                              clock=lambda: evening) as opened:
        client = opened.client
        csrf = await _login(opened, "tom")
        page = await (await client.get("/classes/pupils")).text()
        status = re.search(r'id="class-status">(.*?)</p>', page).group(1)
        assert status == "Fermée jusqu&#x27;à demain 7 h 00"
        assert '<p class="rule" id="class-rule">tous les jours, de 19 h 00 à 7 h 00 : Internet coupé</p>' in page
        why = await (await client.get("/why", params={"name": "casino.example", "class": "pupils"})).text()
        assert "<td>Étape</td><td>Classe fermée (5 closed)</td>" in why
        assert "<td>Règle</td><td>tous les jours, de 19 h 00 à 7 h 00 : Internet coupé</td>" in why
        why = await (await client.get("/why", params={"name": "casino.example", "class": "pupils",
                                                       "at": "2026-12-07T10:00"})).text()
        assert "<td>Étape</td><td>Catégorie ou application bloquée (9 category)</td>" in why
        assert "<td>Règle</td><td>catégorie Jeux d&#x27;argent : casino.example</td>" in why
        await client.post("/language", data={"language": "en", "csrf_token": csrf})
        page = await (await client.get("/classes/pupils")).text()
        assert re.search(r'id="class-status">Closed until tomorrow 7:00\sAM</p>', page)
        assert "every day, 7:00\u202fPM to 7:00\u202fAM: internet off" in page


# --- item 9 (part): French day names, the role in the header -----------------------------------------

async def test_the_schedule_takes_french_day_names_and_the_header_says_the_role(dashboard):
    client = dashboard.client
    csrf = await _login(dashboard, "alice")
    response = await client.post("/classes/new", data={
        "csrf_token": csrf, "version": "", "id": "cm1-b", "networks": "10.9.0.0/24",
        "schedule-0-days": "lun-ven", "schedule-0-from": "08:30", "schedule-0-to": "16:30",
        "schedule-0-block": "Jeux vidéo",
        "schedule-1-days": "Samedi, dimanche", "schedule-1-from": "00:00", "schedule-1-to": "24:00",
        "schedule-1-closed": "on"}, allow_redirects=False)
    assert response.status == 303, await response.text()
    windows = dashboard.resolver.service.state.snapshot.policy.classes["cm1-b"].rules.schedule
    assert [sorted(window.days) for window in windows] == [[0, 1, 2, 3, 4], [5, 6]]
    page = await (await client.get("/classes")).text()
    assert "<span>alice — compte administrateur</span>" in page
    await client.post("/language", data={"language": "en", "csrf_token": csrf})
    assert "<span>alice — admin account</span>" in await (await client.get("/classes")).text()
