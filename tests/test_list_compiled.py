"""The compiled table: what a lookup matches, against a plain reference, and the file it lives in."""

from __future__ import annotations

import ipaddress
import random
import zlib
from pathlib import Path

import pytest

from blocklists import build as build_module
from blocklists.build import KeyStore, SourceInput, build, fingerprint
from blocklists.compiled import ArtifactError, CompiledLists, empty, load, name_key, read_header
from blocklists.formats import parse_lines
from blocklists.names import parents
from blocklists.settings import ListSource
from tests.test_list_formats import FORMAT_CASES

MAX_BYTES = 10 * 1024 * 1024


def compile_sources(tmp_path: Path, *sources: ListSource, files: dict[str, str] | None = None
                    ) -> CompiledLists:
    """Build from inline sources (or files written under tmp_path) and load the result."""
    inputs = []
    for source in sources:
        if source.path:
            path = tmp_path / source.path
            path.write_text((files or {})[source.path])
            inputs.append(SourceInput(source, [str(path)], ["file"]))
        else:
            inputs.append(SourceInput(source, [], [""]))
    out = tmp_path / "lists.bin"
    build(inputs, out, max_bytes=MAX_BYTES, work_dir=tmp_path)
    return load(out)


def inline(name: str, category: str, *entries: str, **extra) -> ListSource:
    return ListSource(name=name, format="domains", category=category, domains=entries, **extra)


# ---- lookups ----------------------------------------------------------------------------------


@pytest.fixture
def lists(tmp_path: Path) -> CompiledLists:
    adblock = ListSource(name="easy", format="adblock", category="ads", path="ads.txt")
    return compile_sources(
        tmp_path,
        inline("ut1", "adult", "porn.example", "a.b.deep.example", "203.0.113.5", "198.51.100.0/24"),
        inline("extra", "adult", "b.deep.example", "more.example"),
        inline("ut1", "gambling", "casino.example", "porn.example"),
        inline("tld", "bad_tlds", "zip"),
        adblock,
        files={"ads.txt": "||ads.example^\n@@||ok.ads.example^\nexact.example\n"
                          "@@|allowed.exact.example^\n||allowed.exact.example^\n"
                          "||gambling-ads.example^\n"},
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("porn.example", {"adult": "porn.example", "gambling": "porn.example"}),
        ("www.porn.example", {"adult": "porn.example", "gambling": "porn.example"}),
        ("porn.example.org", {}),
        ("xporn.example", {}),  # a parent match is by whole labels only
        ("example", {}),
        ("x.a.b.deep.example", {"adult": "a.b.deep.example"}),  # the most specific entry
        ("x.b.deep.example", {"adult": "b.deep.example"}),
        ("deep.example", {}),
        ("file.zip", {"bad_tlds": "zip"}),
        ("zip", {"bad_tlds": "zip"}),
        ("ads.example", {"ads": "ads.example"}),
        ("cdn.ads.example", {"ads": "ads.example"}),
        ("ok.ads.example", {}),  # @@||ok.ads.example^ excepts it, and its subdomains
        ("x.ok.ads.example", {}),
        ("exact.example", {"ads": "exact.example"}),
        ("www.exact.example", {}),  # a plain AdBlock line is exact
        ("allowed.exact.example", {}),  # @@|x^ excepts exactly x...
        ("sub.allowed.exact.example", {"ads": "allowed.exact.example"}),  # ...not its subdomains
        ("casino.example", {"gambling": "casino.example"}),
        ("", {}),
    ],
)
def test_categories_of(lists: CompiledLists, name: str, expected: dict[str, str]) -> None:
    assert lists.categories_of(name) == expected


def test_exceptions_stay_within_their_own_source(tmp_path: Path) -> None:
    compiled = compile_sources(
        tmp_path,
        ListSource(name="easy", format="adblock", category="ads", path="a.txt"),
        inline("other", "ads", "tracker.example"),
        files={"a.txt": "||tracker.example^\n@@||tracker.example^\n"},
    )
    matched = compiled.matching_lists("tracker.example")
    assert [compiled.lists[index].source for index in matched] == ["other"]
    assert compiled.categories_of("tracker.example") == {"ads": "tracker.example"}


def test_addresses(lists: CompiledLists) -> None:
    assert lists.categories_of_address("203.0.113.5") == {"adult"}
    assert lists.categories_of_address("198.51.100.77") == {"adult"}
    assert lists.categories_of_address("192.0.2.1") == set()
    assert lists.categories_of_address("2001:db8::1") == set()


def test_counts_and_categories(lists: CompiledLists) -> None:
    assert lists.categories == {"adult": "black", "gambling": "black", "bad_tlds": "black",
                                "ads": "black"}
    by_source = {(info.source, info.category): info for info in lists.lists}
    assert by_source[("ut1", "adult")].entries == 2
    assert by_source[("ut1", "adult")].networks == 2
    assert by_source[("easy", "ads")].entries == 4  # ads, exact, allowed.exact, gambling-ads
    assert lists.key_count == 11  # distinct names over all lists, exceptions included


def reference_categories(entries: dict[str, set[str]], name: str) -> dict[str, str]:
    """Suffix matching the slow, obvious way: every parent, most specific first."""
    found: dict[str, str] = {}
    for parent in parents(name):
        for category, names in entries.items():
            if parent in names:
                found.setdefault(category, parent)
    return found


def random_name(rng: random.Random) -> str:
    labels = [rng.choice(["www", "m", "cdn", "a", "b"]) for _ in range(rng.randrange(0, 3))]
    labels.append("".join(rng.choices("abcdefghij0123456789-", k=rng.randrange(1, 8))).strip("-")
                  or "x")
    labels.append(rng.choice(["com", "net", "fr", "co.uk", "example"]))
    return ".".join(labels)


def test_many_entries_agree_with_a_plain_reference(tmp_path: Path) -> None:
    """Thousands of names in a 256-bucket minimum table: buckets hold several keys, and partitions
    several spills (SPILL_KEYS lowered), and every answer matches sets walked parent by parent."""
    rng = random.Random(6)
    entries = {category: {random_name(rng) for _ in range(3000)}
               for category in ("adult", "games", "chat")}
    build_module.SPILL_KEYS, saved = 500, build_module.SPILL_KEYS
    try:
        compiled = compile_sources(tmp_path, *(inline(f"s{i}", category, *sorted(names))
                                               for i, (category, names) in enumerate(entries.items())))
    finally:
        build_module.SPILL_KEYS = saved
    queries = [random_name(rng) for _ in range(3000)]
    queries += [f"sub.{name}" for names in entries.values() for name in list(names)[:300]]
    for query in queries:
        assert compiled.categories_of(query) == reference_categories(entries, query), query
    assert compiled.entry_count == sum(len(names) for names in entries.values())


def test_a_failed_source_leaves_nothing_behind(tmp_path: Path) -> None:
    """A source that fails half way (its archive is cut short) adds none of the names it read."""
    good = tmp_path / "good.txt"
    good.write_text("kept.example\n")
    broken = tmp_path / "broken.txt.gz"
    import gzip

    broken.write_bytes(gzip.compress(("\n".join(f"n{i}.example" for i in range(5000))).encode())[:-40])
    inputs = [SourceInput(ListSource(name="s", format="domains", category="c"),
                          [str(broken), str(good)], ["broken", "good"])]
    result = build(inputs, tmp_path / "lists.bin", max_bytes=MAX_BYTES, work_dir=tmp_path)
    [outcome] = result.sources
    assert outcome.ok and outcome.used == 1
    assert "cannot read broken.txt.gz" in outcome.errors[0]
    compiled = load(tmp_path / "lists.bin")
    assert compiled.categories_of("kept.example") == {"c": "kept.example"}
    assert compiled.categories_of("n1.example") == {}
    assert compiled.key_count == 1
    assert compiled.inputs["fingerprint"] == fingerprint(inputs, [1])


@pytest.mark.parametrize(("fmt", "match", "text", "expected", "bad_lines", "skipped"),
                         FORMAT_CASES)
def test_keyed_parsing_sees_what_set_parsing_sees(
    tmp_path: Path, fmt: str, match: str, text: str, expected: dict, bad_lines: list[int],
    skipped: int,
) -> None:
    """Each format's table, parsed straight into key sinks: the same keys, counts and bad lines."""
    store = KeyStore(tmp_path)
    try:
        keyed = parse_lines(text.splitlines(), fmt, match=match, into=store.parsed_list())
        store.flush()
        for kind, field in enumerate(("suffix", "exact", "except_suffix", "except_exact")):
            target = getattr(keyed, field)
            keys = set()
            for records in store.records:
                for group, offset, count in records:
                    if group == target.group:
                        keys.update(store.read(offset, count))
            assert keys == {name_key(name, store.hash_key) for name in expected.get(field, set())}, field
        assert keyed.networks == expected.get("networks", set())
        assert [number for number, _ in keyed.bad_examples] == bad_lines
        assert keyed.skipped == skipped
    finally:
        store.close()


# ---- the file ---------------------------------------------------------------------------------


def test_save_and_load_round_trip(lists: CompiledLists, tmp_path: Path) -> None:
    copy = tmp_path / "copy.bin"
    lists.save(copy)
    again = load(copy)
    assert again.lists == lists.lists
    assert again.categories_of("www.porn.example") == lists.categories_of("www.porn.example")
    assert again.categories_of_address("198.51.100.1") == {"adult"}
    assert read_header(copy)["key_count"] == lists.key_count


def test_loaded_lists_survive_the_file_being_replaced(lists: CompiledLists, tmp_path: Path) -> None:
    path = tmp_path / "lists.bin"
    mapped = load(path)
    empty().save(path)  # an atomic replace, as every write is
    assert mapped.categories_of("porn.example")  # still the old table
    assert load(path).categories_of("porn.example") == {}


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda data: b"", "not a classguard compiled lists file"),
        (lambda data: b"CGLISTS1" + data[8:], "not a classguard compiled lists file"),
        (lambda data: data[:-100], "truncated"),
        (lambda data: data[:40], "cannot read compiled lists"),
    ],
    ids=["empty", "old-format", "truncated", "cut-header"],
)
def test_damaged_files_are_refused(lists: CompiledLists, tmp_path: Path, mangle, message) -> None:
    path = tmp_path / "lists.bin"
    path.write_bytes(mangle(path.read_bytes()))
    with pytest.raises(ArtifactError, match=message):
        load(path)


def test_empty_lists_match_nothing() -> None:
    lists = empty()
    assert lists.categories_of("example.com") == {}
    assert lists.categories_of_address("192.0.2.1") == set()
    assert lists.entry_count == 0


def test_ip_entries_of_every_kind_are_kept(tmp_path: Path) -> None:
    compiled = compile_sources(tmp_path, inline("s", "doh", "192.0.2.53", "2001:db8::/32"))
    assert compiled.categories_of_address("2001:db8::53") == {"doh"}
    assert compiled.networks[0][0] == ipaddress.ip_network("2001:db8::/32")


# ---- issue 20, item 2: keys are keyed, so collisions cannot be crafted -------------------------

# Solved for under the former unkeyed scheme (crc32(name) << 32 | crc32(reversed name)): this
# 3-label name had the key of `good.example`, an exception, and so escaped `||pornsite.example^`.
CRAFTED = "eiccmmmmmmgmoccomkoaagaaaaaaaaaaaaaaaaaa.pornsite.example"


def test_a_name_crafted_to_collide_with_an_exception_stays_blocked(tmp_path: Path) -> None:
    data = CRAFTED.encode()
    assert (zlib.crc32(data), zlib.crc32(data[::-1])) == (
        zlib.crc32(b"good.example"), zlib.crc32(b"good.example"[::-1]))  # the planted collision
    compiled = compile_sources(
        tmp_path,
        ListSource(name="easy", format="adblock", category="adult", path="a.txt"),
        files={"a.txt": "||pornsite.example^\n@@||good.example^\n||one.three.example^\n"},
    )
    assert 3 in compiled.label_counts  # the crafted name's own suffix is looked up
    assert compiled.categories_of("www.pornsite.example") == {"adult": "pornsite.example"}
    assert compiled.categories_of(CRAFTED) == {"adult": "pornsite.example"}
    assert compiled.categories_of("good.example") == {}


def test_every_compile_draws_its_own_hash_key(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = compile_sources(tmp_path / "a", inline("x", "adult", "one.example"))
    second = compile_sources(tmp_path / "b", inline("x", "adult", "one.example"))
    assert len(first.hash_key) == 16 and first.hash_key != second.hash_key
    assert first.categories_of("www.one.example") == second.categories_of("www.one.example") == {
        "adult": "one.example"}
    assert read_header(tmp_path / "a" / "lists.bin")["hash_key"] == first.hash_key.hex()
