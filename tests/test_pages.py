"""The dashboard's pages over real HTTP (aiohttp): logging in with the form, escaping what users
typed, a teacher kept to their classes, the CSRF token, the class form's errors by their field,
French and English. The browser run is tests/test_browser.py."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re

import aiohttp
import pytest

from dashboard import i18n
from tests.dashboard_fixtures import PASSWORD, dashboard  # noqa: F401 (a fixture)


async def _login(dashboard, name: str) -> str:
    """Log in through the form; the CSRF token the next page carries."""
    client = dashboard.client
    response = await client.post("/login", data={"name": name, "password": PASSWORD},
                                 allow_redirects=False)
    assert response.status == 303, await response.text()
    return _csrf(await (await client.get("/")).text())


def _csrf(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


async def test_anonymous_visitor_is_sent_to_the_login_page_in_french(dashboard):
    response = await dashboard.client.get("/classes/pupils", allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == "/login?next=/classes/pupils"
    page = await (await dashboard.client.get("/login")).text()
    assert '<html lang="fr">' in page and "Se connecter" in page
    assert "Log in" in await (await dashboard.client.get("/login?lang=en")).text()


async def test_wrong_password_shows_the_form_again_and_is_throttled(dashboard):
    client = dashboard.client
    for _ in range(3):
        response = await client.post("/login", data={"name": "tom", "password": "nope-nope-nope"})
        assert response.status == 401
        assert "Identifiant ou mot de passe incorrect" in await response.text()
    response = await client.post("/login", data={"name": "tom", "password": PASSWORD})
    assert response.status == 429 and response.headers["Retry-After"] == "1"


async def test_login_goes_back_to_the_page_asked_for_but_never_elsewhere(dashboard):
    client = dashboard.client
    for target, expected in (("/classes/pupils", "/classes/pupils"), ("//evil.example/", "/"),
                             ("https://evil.example/", "/")):
        response = await client.post("/login", params={"next": target},
                                     data={"name": "tom", "password": PASSWORD}, allow_redirects=False)
        assert response.headers["Location"] == expected


async def test_a_class_named_script_shows_as_text(dashboard):
    client = dashboard.client
    csrf = await _login(dashboard, "alice")
    response = await client.post("/classes/pupils/edit", data={
        "csrf_token": csrf, "version": "", "name": "<script>alert(1)</script>",
        "networks": "127.0.0.2/32", "block": "adult"}, allow_redirects=False)
    assert response.status == 303, await response.text()
    for path in ("/", "/classes", "/classes/pupils", "/classes/pupils/edit"):
        page = await (await client.get(path)).text()
        assert "<script>" not in page, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page, path


async def test_a_teacher_sees_only_their_classes(dashboard):
    client = dashboard.client
    csrf = await _login(dashboard, "tom")
    listing = await (await client.get("/classes")).text()
    assert 'href="/classes/pupils"' in listing and 'href="/classes/staff"' not in listing
    for method, path, data in (("GET", "/classes/staff", None),
                               ("POST", "/classes/staff/pause", {"minutes": "15"}),
                               ("POST", "/classes/staff/allow", {"target": "example.com", "minutes": "5"}),
                               ("POST", "/classes/staff/resume", {}),
                               ("GET", "/why?name=example.com&class=staff", None),
                               ("GET", "/classes/pupils/edit", None), ("GET", "/users", None),
                               ("GET", "/audit", None), ("GET", "/lists", None)):
        response = await client.request(method, path, data={**(data or {}), "csrf_token": csrf}
                                        if method == "POST" else None)
        assert response.status == 403, (method, path)
        assert '<html lang="fr">' in await response.text()  # a page, not JSON
    assert not dashboard.resolver.service.state.snapshot.overrides


async def test_a_form_without_the_csrf_token_is_refused(dashboard):
    client = dashboard.client
    csrf = await _login(dashboard, "tom")
    for data in ({"minutes": "15"}, {"minutes": "15", "csrf_token": "forged"}):
        response = await client.post("/classes/pupils/pause", data=data)
        assert response.status == 403
        assert "rechargez la page et recommencez" in await response.text()
    assert not dashboard.resolver.service.state.snapshot.overrides
    response = await client.post("/classes/pupils/pause", data={"minutes": "15", "csrf_token": csrf},
                                 allow_redirects=False)
    assert response.status == 303
    assert [item.kind for item in dashboard.resolver.service.state.snapshot.overrides] == ["pause"]


async def test_pause_allow_and_resume_with_the_forms(dashboard):
    client = dashboard.client
    csrf = await _login(dashboard, "tom")
    state = dashboard.resolver.service.state
    response = await client.post("/classes/pupils/pause", data=[("minutes", ""), ("minutes", "30"),
                                                                 ("csrf_token", csrf)])
    page = await response.text()
    assert response.status == 200 and "La classe est en pause." in page and "En pause jusqu" in page
    assert (await dashboard.resolver.query("example.com")).answer[0][0].to_text() == "0.0.0.0"
    response = await client.post("/classes/pupils/allow",
                                 data={"target": "example.com", "minutes": "10", "csrf_token": csrf})
    assert "Autorisé : example.com" in await response.text()
    assert (await dashboard.resolver.query("example.com")).answer[0][0].to_text() == "93.184.215.14"
    response = await client.post("/classes/pupils/allow",
                                 data={"target": "adult.example", "minutes": "10", "csrf_token": csrf})
    assert response.status == 400
    assert "locked category" in await response.text()  # the commands' own refusal, by the form
    await client.post("/classes/pupils/resume", data={"csrf_token": csrf})
    assert [item.kind for item in state.snapshot.overrides if item.active(state.clock())] == ["allow"]


async def test_invalid_network_is_shown_next_to_its_field(dashboard):
    client = dashboard.client
    csrf = await _login(dashboard, "alice")
    response = await client.post("/classes/new", data={
        "csrf_token": csrf, "version": "", "id": "cm1-b", "name": "CM1 B",
        "networks": "10.0.0.300/24", "block": "adult",
        "schedule-0-days": "mon-fri", "schedule-0-from": "08:00", "schedule-0-to": "08:00",
        "schedule-0-closed": "on"})
    page = await response.text()
    assert response.status == 400
    networks = re.search(r'data-field="networks">(.*?)</div>', page, re.S).group(1)
    assert "réseau invalide &#x27;10.0.0.300/24&#x27;" in networks  # French by default
    schedule = page[page.index('data-field="schedule"'):]
    assert "commence et finit à la même heure (08:00)" in schedule
    assert 'value="CM1 B"' in page  # what was typed stays
    assert "cm1-b" not in dashboard.resolver.service.state.snapshot.policy.classes


async def test_a_class_created_with_every_field_reads_back_in_the_form(dashboard):
    client = dashboard.client
    csrf = await _login(dashboard, "alice")
    fields = {"id": "cm1-b", "name": "CM1 B", "school": "jean-jaures",
              "networks": "10.9.0.0/24\n2001:db8:9::/64", "block": "adult, gambling",
              "allow": "lumni.fr", "deny": "tiktok.com", "safe_search": "moderate",
              "screen_time": "90", "home.block": "gambling", "home.safe_search": "strict",
              "schedule-0-days": "mon-fri", "schedule-0-from": "08:30", "schedule-0-to": "16:30",
              "schedule-0-block": "gambling", "schedule-0-school_days_only": "on",
              "schedule-1-days": "all", "schedule-1-from": "21:00", "schedule-1-to": "07:00",
              "schedule-1-closed": "on", "schedule-1-where": "home"}
    response = await client.post("/classes/new", data={**fields, "csrf_token": csrf, "version": ""},
                                 allow_redirects=False)
    assert response.status == 303, await response.text()
    item = dashboard.resolver.service.state.snapshot.policy.classes["cm1-b"]
    assert [str(network) for network in item.networks] == ["10.9.0.0/24", "2001:db8:9::/64"]
    assert item.screen_time_minutes == 90 and item.rules.safe_search == "moderate"
    assert item.home.schedule[0].closed and item.rules.schedule[0].school_days_only
    page = await (await client.get("/classes/cm1-b/edit")).text()
    for value in ("CM1 B", "lumni.fr", "tiktok.com", "16:30", "21:00"):
        assert f'value="{value}"' in page, value
    week = await (await client.get("/classes/cm1-b")).text()
    assert "Temps d&#x27;écran : 90 min par appareil" in week
    assert week.count('class="slot closed') >= 7 and 'class="slot block' in week
    # At home at 22:00 the bedtime window closes everything, until 07:00 the next morning.
    why = await (await client.get("/why", params={"name": "example.com", "class": "cm1-b",
                                                   "at": "2030-01-07T22:00", "scope": "home"})).text()
    assert 'class="card answer blocked"' in why
    assert "<td>En vigueur</td><td>tous les jours, de 21 h 00 à 7 h 00 : Internet coupé</td>" in why
    assert "<td>Jusqu&#x27;à</td><td>mardi 8 janvier 2030 à 7 h 00</td>" in why


async def test_why_explains_the_decision(dashboard):
    client = dashboard.client
    await _login(dashboard, "tom")
    page = await (await client.get("/why", params={"name": "casino.example", "class": "pupils"})).text()
    assert "category:gambling" in page and 'class="card answer blocked"' in page
    page = await (await client.get("/why", params={"name": "bad name!", "class": "pupils"})).text()
    assert "n&#x27;est pas un nom de domaine valide" in page


async def test_language_is_kept_with_the_user(dashboard):
    client = dashboard.client
    csrf = await _login(dashboard, "tom")
    response = await client.post("/language", data={"language": "en", "next": "/classes",
                                                     "csrf_token": csrf})
    page = await response.text()
    assert '<html lang="en">' in page and "Log out" in page
    user = await dashboard.resolver.service.store.get_user("tom")
    assert user.language == "en"


async def test_admin_pages_render_in_both_languages(dashboard):
    client = dashboard.client
    csrf = await _login(dashboard, "alice")
    for language in i18n.LANGUAGES:
        await client.post("/language", data={"language": language, "csrf_token": csrf})
        for path in ("/", "/classes", "/classes/pupils", "/classes/new", "/classes/pupils/edit",
                     "/devices", "/lists", "/why", "/audit", "/users"):
            response = await client.get(path)
            assert response.status == 200, (path, await response.text())
            assert f'<html lang="{language}">' in await response.text()


async def test_users_page_adds_a_teacher(dashboard):
    client = dashboard.client
    csrf = await _login(dashboard, "alice")
    response = await client.post("/users/add", data={"csrf_token": csrf, "name": "lea", "role": "teacher",
                                                      "classes": "staff", "password": "short",
                                                      "language": "en"})
    assert response.status == 400
    assert 'required></label><p class="error" id="error-password" role="alert">Un mot de passe a ' \
           'au moins 10 caractères.</p>' in await response.text()
    response = await client.post("/users/add", data={"csrf_token": csrf, "name": "lea", "role": "teacher",
                                                      "classes": "staff", "password": PASSWORD,
                                                      "language": "en"}, allow_redirects=False)
    assert response.status == 303
    user = await dashboard.resolver.service.store.get_user("lea")
    assert user.classes == ("staff",) and user.language == "en"


async def test_users_page_changes_a_teachers_classes_language_and_state(dashboard):
    client, store = dashboard.client, dashboard.resolver.service.store
    csrf = await _login(dashboard, "alice")
    listing = await (await client.get("/users")).text()
    assert '<a href="/users/tom">Modifier</a>' in listing
    form = await (await client.get("/users/tom")).text()
    assert 'name="classes" value="pupils" checked' in form and 'action="/users/tom/edit"' in form

    # refused: the message by the field at fault, what was sent kept, what was typed escaped
    response = await client.post("/users/tom/edit", data={"csrf_token": csrf, "role": "teacher",
                                                          "language": ""})
    page = await response.text()
    assert response.status == 400
    assert re.search(r'</fieldset><p class="error" id="error-classes" role="alert">'
                     r'Un enseignant a au moins une classe\.</p>', page)
    response = await client.post("/users/tom/edit", data={"csrf_token": csrf, "role": "teacher",
                                                          "classes": "<script>x</script>"})
    page = await response.text()
    assert response.status == 400 and "<script>x" not in page
    assert "Pas de classe « &lt;script&gt;x&lt;/script&gt; »" in page
    assert (await store.get_user("tom")).classes == ("pupils",)

    response = await client.post("/users/tom/edit", allow_redirects=False, data=[
        ("csrf_token", csrf), ("role", "teacher"), ("classes", "pupils"), ("classes", "staff"),
        ("language", "en")])
    assert response.status == 303 and response.headers["Location"] == "/users?done=user_saved"
    tom = await store.get_user("tom")
    assert tom.classes == ("pupils", "staff") and tom.language == "en" and not tom.disabled
    [entry] = await store.audit(1)
    assert (entry.actor, entry.action) == ("alice (dashboard)", "user.change")
    assert (entry.before, entry.after) == ("user tom, role teacher, classes pupils",
                                           "user tom, role teacher, classes pupils, staff, language en")

    # without the CSRF token nothing changes
    response = await client.post("/users/tom/edit", data={"role": "admin"})
    assert response.status == 403 and (await store.get_user("tom")).role == "teacher"

    # disabled from the page (the box ticked), then removed
    response = await client.post("/users/sam/edit", allow_redirects=False, data={
        "csrf_token": csrf, "role": "teacher", "classes": "staff", "disabled": "1"})
    assert response.status == 303 and (await store.get_user("sam")).disabled
    assert "désactivé" in await (await client.get("/users")).text()
    response = await client.post("/users/sam/remove", data={"csrf_token": csrf}, allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/users?done=user_removed"
    assert await store.get_user("sam") is None
    assert (await client.get("/users/sam")).status == 404

    # the last enabled admin cannot go: said next to the button
    response = await client.post("/users/alice/remove", data={"csrf_token": csrf})
    assert response.status == 400
    assert 'id="error-remove" role="alert">alice est le dernier administrateur actif' in await response.text()


async def test_a_teacher_does_not_reach_the_users_pages(dashboard):
    client = dashboard.client
    csrf = await _login(dashboard, "tom")
    assert (await client.get("/users/sam")).status == 403
    response = await client.post("/users/sam/remove", data={"csrf_token": csrf})
    assert response.status == 403
    assert await dashboard.resolver.service.store.get_user("sam") is not None


def test_every_key_the_pages_use_is_in_every_catalogue():
    from pathlib import Path

    import dashboard.pages
    from dashboard import class_form
    from dashboard.auth import ROLES
    from policies.model import WEEKDAYS

    source = "".join(path.read_text() for path in Path(dashboard.pages.__file__).parent.glob("*pages.py"))
    used = {key for key in re.findall(r'\bt\("([a-z_.]+)"', source) if not key.endswith((".", "_"))}
    # The keys made from a prefix and a value:
    used |= {f"day.{day}" for day in WEEKDAYS} | {f"role.{role}" for role in ROLES} \
        | {f"safe_search.{mode or 'default'}" for mode in class_form.SAFE_SEARCH_CHOICES} \
        | {"why.scope_school", "why.scope_home"}
    for language in i18n.LANGUAGES:
        words = i18n.catalogue(language)
        assert not used - set(words), language
    assert set(i18n.catalogue("fr")) == set(i18n.catalogue("en"))
    json.dumps(i18n.catalogue("fr"))


DOH = {"doh": {"listen": "127.0.0.1:0", "public_url": "https://dns.ecole.example/dns-query"}}


@pytest.mark.parametrize("resolver_settings", [DOH])
async def test_enrol_shows_the_urls_qr_and_profile_once(dashboard):
    client = dashboard.client
    csrf = await _login(dashboard, "alice")
    response = await client.post("/devices/enrol", data={"csrf_token": csrf, "id": "tablette-0042",
                                                         "class": "pupils", "addresses": "127.0.0.7"})
    page = await response.text()
    assert response.status == 200, page
    url = re.search(r'<code id="doh-url">(https://dns\.ecole\.example/dns-query/([a-z0-9]+))</code>', page)
    token = url.group(2)
    assert "<svg" in page and "Affiché une seule fois" in page
    profile = re.search(r'download="tablette-0042.mobileconfig" href="data:application/'
                        r'x-apple-aspen-config;base64,([^"]+)"', page).group(1)
    assert url.group(1).encode() in base64.b64decode(profile)
    device = dashboard.resolver.service.state.snapshot.policy.devices["tablette-0042"]
    assert device.token_sha256 == hashlib.sha256(token.encode()).hexdigest()
    listing = await (await client.get("/devices")).text()
    assert "tablette-0042" in listing and token not in listing
    response = await client.post("/devices/enrol", data={"csrf_token": csrf, "id": "tablette-0042",
                                                         "class": "pupils"})
    assert response.status == 400 and "exists already" in await response.text()

    rotated = await (await client.post("/devices/tablette-0042/rotate", data={"csrf_token": csrf})).text()
    assert token not in rotated and 'id="doh-url"' in rotated
    response = await client.post("/devices/tablette-0042/revoke", data={"csrf_token": csrf},
                                 allow_redirects=False)
    assert response.status == 303
    assert dashboard.resolver.service.state.snapshot.policy.devices["tablette-0042"].token_sha256 is None


@pytest.mark.parametrize("resolver_settings", [DOH])
async def test_csv_import_is_all_or_nothing(dashboard):
    client = dashboard.client
    csrf = await _login(dashboard, "alice")

    def upload(text: str) -> aiohttp.FormData:
        form = aiohttp.FormData()
        form.add_field("csrf_token", csrf)
        form.add_field("csv", text.encode(), filename="ecole.csv", content_type="text/csv")
        return form
    response = await client.post("/devices/import", data=upload("id,class\nt-1,pupils\nt-2,nope\n"))
    assert response.status == 400
    assert "t-2" in await response.text()
    assert not dashboard.resolver.service.state.snapshot.policy.devices
    response = await client.post("/devices/import", data=upload("id,class\nt-1,pupils\nt-2,staff\n"))
    page = await response.text()
    assert response.status == 200 and "2 appareils inscrits" in page
    assert page.count("https://dns.ecole.example/dns-query/") == 2
    assert set(dashboard.resolver.service.state.snapshot.policy.devices) == {"t-1", "t-2"}


async def test_enrol_without_doh_or_dot_says_why(dashboard):
    csrf = await _login(dashboard, "alice")
    response = await dashboard.client.post("/devices/enrol", data={"csrf_token": csrf, "id": "t-1",
                                                                   "class": "pupils"})
    assert response.status == 400 and "ni section doh" in await response.text()
    assert not dashboard.resolver.service.state.snapshot.policy.devices


async def test_a_stale_class_form_does_not_overwrite_a_newer_change(dashboard):
    client = dashboard.client
    csrf = await _login(dashboard, "alice")
    form = await (await client.get("/classes/staff/edit")).text()
    version = re.search(r'name="version" value="(\d+)"', form).group(1)
    fields = {"csrf_token": csrf, "version": version, "networks": "127.0.0.3/32"}
    first = await client.post("/classes/staff/edit", data={**fields, "name": "first"},
                              allow_redirects=False)
    assert first.status == 303
    second = await client.post("/classes/staff/edit", data={**fields, "name": "second"})
    assert second.status == 400 and "modifié la politique entre-temps" in await second.text()
    assert dashboard.resolver.service.state.snapshot.policy.classes["staff"].name == "first"


async def test_refresh_now_runs_the_list_refresh(dashboard):
    from blocklists.update import read_status

    csrf = await _login(dashboard, "alice")
    state_dir = dashboard.resolver.service.config.state_dir
    before = read_status(state_dir).checked_at
    response = await dashboard.client.post("/lists/refresh", data={"csrf_token": csrf})
    assert "Mise à jour des listes lancée" in await response.text()
    for _ in range(200):
        if read_status(state_dir).checked_at > before:
            break
        await asyncio.sleep(0.05)
    assert read_status(state_dir).checked_at > before


async def test_overview_and_class_page_count_today_from_the_query_log(dashboard):
    client = dashboard.client
    for name in ("adult.example", "www.adult.example", "example.com"):
        await dashboard.resolver.query(name)
    await _login(dashboard, "tom")
    overview = await (await client.get("/")).text()
    row = re.search(r'<tr><td><a href="/classes/pupils">CM2 A</a></td>(.*?)</tr>', overview).group(1)
    assert row.startswith("<td>3</td><td>2</td><td>Ouverte</td>"), row
    page = await (await client.get("/classes/pupils")).text()
    assert "<td>adult.example</td><td>2</td>" in page  # registrable domains, most blocked first


def test_every_translated_policy_message_still_matches_what_the_checker_says(tmp_path):
    """Each French pattern is checked against the checker's own message for a class that makes
    it: a reworded message fails here instead of going untranslated on the French pages."""
    from dashboard.i18n import policy_errors
    from policies.loader import PolicyError, load_policy

    rules = [
        "networks: ['10.0.0.300/24']", "networks: ['10.0.0.1/24']", "block: [adlt]",
        "block: [nothing-like-it]", "block_services: [tiktk]", "allow: ['http://a.example/x']",
        "allow: ['*.a.example']", "allow: ['a..example']", "allow: ['192.0.2.1']",
        "allow: [co.uk]", "allow: [blogspot.com]", "screen_time: {daily_minutes: 0}",
        "schedule: [{days: mon, from: '08:00', to: '08:00', closed: true}]",
        "schedule: [{days: mon, from: '08:00', to: '09:00'}]",
        "schedule: [{from: '08:00', to: '09:00', closed: true}]",
        "schedule: [{days: mnday, from: '08:00', to: '09:00', closed: true}]",
        "schedule: [{days: mon, to: '09:00', closed: true}]",
        "schedule: [{days: mon, from: '8h', to: '09:00', closed: true}]",
        "schedule: [{days: mon, from: '24:00', to: '09:00', closed: true}]",
        "safe_search: always",
    ]
    documents = [f"classes:\n  a:\n    {rule}\n" if rule.startswith("networks") else
                 f"classes:\n  a:\n    networks: ['10.1.0.0/24']\n    {rule}\n" for rule in rules]
    documents.append("classes:\n  'x y':\n    networks: ['10.1.0.0/24']\n")
    documents.append("classes:\n  a:\n    networks: ['10.1.0.0/24']\n"
                     "  b:\n    networks: ['10.1.0.0/24']\n")
    path = tmp_path / "policy.yaml"
    untranslated = []
    for document in documents:
        path.write_text(document)
        with pytest.raises(PolicyError) as raised:
            load_policy(path, known_categories={"adult"}, known_services={"tiktok"})
        for error in raised.value.errors:
            message = error.split(": ", 1)[1]  # without FILE:LINE
            if policy_errors.translate(message, "fr") == message:
                untranslated.append(message)
            assert policy_errors.translate(message, "en") == message
    assert untranslated == []


async def test_the_devices_page_shows_one_page_with_a_search_and_a_class_filter(dashboard):
    """1,200 devices: the page holds 50 of them (its size does not grow with the devices), a
    search field, a class filter, and a link to the next page."""
    commands = dashboard.resolver.service.control.commands
    await commands.run("device.import", {"devices": [
        {"id": f"tablette-{n:04d}", "class": "pupils" if n % 2 else "staff",
         "token_sha256": hashlib.sha256(str(n).encode()).hexdigest()} for n in range(1200)]},
        "test")
    client = dashboard.client
    await _login(dashboard, "alice")
    response = await client.get("/devices")
    body = await response.text()
    assert response.status == 200 and len(body.encode()) < 100_000
    assert body.count('action="/devices/tablette-') == 2 * 50  # rotate and revoke, 50 rows
    assert 'type="search" name="q"' in body and "Toutes les classes" in body
    assert "1200 appareils inscrits" in body
    following = re.search(r'<a href="(/devices\?cursor=tablette-0049)" rel="next">Page suivante</a>',
                          body)
    assert following, body[-2000:]
    second = await (await client.get(following.group(1))).text()
    assert "tablette-0050" in second and "tablette-0049<" not in second and "Première page" in second
    staff = await (await client.get("/devices?class=staff&q=tablette-001")).text()
    rows = re.findall(r"<td>(tablette-\d{4})</td>", staff)
    assert rows == [f"tablette-{n:04d}" for n in range(10, 20, 2)]
