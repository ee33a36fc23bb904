"""App bundles, engines without safe mode, and the home overlay, decided by the policy engine."""

from __future__ import annotations

import time

import pytest

from blocklists.bundled import load_bundled
from blocklists.compiled import empty
from policies.engine import Action, PolicyEngine
from policies.loader import parse_policy
from policies.model import Override
from policies.yaml_lines import parse_yaml

BUNDLED = load_bundled()
SERVICES = sorted(BUNDLED.services)


def engine_for(text: str, overrides=()) -> PolicyEngine:
    policy = parse_policy(parse_yaml(text, "policy.yaml"), source="policy.yaml",
                          known_categories=set(BUNDLED.categories), known_services=set(BUNDLED.services))
    return PolicyEngine(policy, empty(), BUNDLED, overrides=tuple(overrides))


def test_the_bundle_has_the_apps_schools_ask_for():
    wanted = {"youtube", "tiktok", "instagram", "snapchat", "facebook", "whatsapp", "discord", "twitch",
              "roblox", "fortnite", "minecraft", "netflix", "twitter", "reddit", "chatgpt"}
    assert wanted <= set(SERVICES)
    for service in BUNDLED.services.values():
        assert service.domains and service.source and service.updated, service.id


@pytest.mark.parametrize("service_id", SERVICES)
def test_each_service_blocks_its_domains_and_a_temporary_allow_opens_them_all(service_id):
    service = BUNDLED.services[service_id]
    text = f"classes:\n  c:\n    networks: ['10.0.0.0/24']\n    block_services: [{service_id}]\n"
    blocked = engine_for(text)
    now = time.time()
    opened = engine_for(text, [Override("o1", "c", "allow", until=now + 600, target=service_id,
                                        target_kind="service", created_at=now - 1)])
    for domain in service.domains:
        for name in (domain, "www." + domain):
            decision = blocked.decide(name, "c")
            assert decision.action is Action.BLOCK and decision.reason == f"service:{service_id}", name
            assert opened.decide(name, "c").action is Action.RESOLVE, name


def test_strict_safe_search_blocks_engines_without_an_enforced_mode():
    engines = sorted(BUNDLED.categories)  # the bundled starter list of such engines
    assert "nosafesearch" in engines
    from blocklists.bundled import STARTER_DIR

    names = [line.strip() for line in (STARTER_DIR / "nosafesearch.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    import tempfile
    from pathlib import Path

    from blocklists.build import SourceInput, build
    from blocklists.compiled import load
    from blocklists.settings import ListSource

    folder = Path(tempfile.mkdtemp())
    build([SourceInput(ListSource(name="starter", format="domains", domains=tuple(names),
                                  category="nosafesearch"))], folder / "lists.bin", max_bytes=1 << 20,
          work_dir=folder)
    lists = load(folder / "lists.bin")
    policy = parse_policy(parse_yaml(
        "classes:\n  strict:\n    networks: ['10.0.0.0/24']\n    safe_search: strict\n"
        "  moderate:\n    networks: ['10.0.1.0/24']\n    safe_search: moderate\n", "p.yaml"),
        source="p.yaml", known_categories=None, known_services=None)
    engine = PolicyEngine(policy, lists, BUNDLED)
    decision = engine.decide(names[0], "strict")
    assert decision.action is Action.BLOCK and decision.reason == "category:nosafesearch"
    assert engine.decide(names[0], "moderate").action is Action.RESOLVE


HOME = """\
classes:
  cm2:
    networks: ['10.0.0.0/24']
    block_services: [roblox]
    deny: [school-only-deny.example]
    safe_search: moderate
    home:
      deny: [home-only-deny.example]
      safe_search: strict
      schedule:
        - {days: all, from: "20:00", to: "07:00", closed: true}
"""


def test_the_home_overlay_adds_to_the_class_at_home_only():
    engine = engine_for(HOME)
    noon = 1_796_040_000.0  # 2026-11-24 12:00 UTC
    evening = noon + 9 * 3600  # 21:00 UTC
    # At school: the class's own rules.
    assert engine.decide("home-only-deny.example", "cm2", "school", noon).action is Action.RESOLVE
    assert engine.decide("www.youtube.com", "cm2", "school", noon).target == "restrictmoderate.youtube.com"
    assert engine.decide("example.com", "cm2", "school", evening).action is Action.RESOLVE
    # At home: the class's rules, plus the overlay's; the overlay's safe_search replaces the class's.
    assert engine.decide("home-only-deny.example", "cm2", "home", noon).reason == "deny"
    assert engine.decide("school-only-deny.example", "cm2", "home", noon).reason == "deny"
    assert engine.decide("www.roblox.com", "cm2", "home", noon).reason == "service:roblox"
    assert engine.decide("www.youtube.com", "cm2", "home", noon).target == "restrict.youtube.com"
    late = engine.decide("example.com", "cm2", "home", evening)
    assert late.action is Action.BLOCK and late.reason == "closed"
