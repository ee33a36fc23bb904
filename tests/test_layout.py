"""The layout of docs/architecture.md holds: each package one job, arrows only going down.

import-linter checks the layers (pyproject.toml's [tool.importlinter]); this file runs it and
adds what its contracts do not say: no circle between any two modules, no import hidden in a
function except the lazy loading of a heavy optional package, and the Store protocol complete
in both backends (callers never probe a store with hasattr).
"""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import grimp

from store.embedded import EmbeddedStore
from store.protocol import (
    CountsLoginFailures, FileBacked, KeepsCounters, PublishesChanges, RecoversLostStore,
    RedisKeyspace, ReportsHealth, SharesLists, Store, StoreAbilities,
)
from store.redis_backend import RedisStore

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("classguard", "dashboard", "admin", "privacy", "resolver", "store", "policies",
            "blocklists", "common")
# What a function may import lazily: packages that cost memory or start-up time for a feature
# that may be off (aiohttp ~14 MB a worker, redis, QR codes, uvloop), and our modules that load
# them. Each such line says why in a comment starting "lazy:".
HEAVY = ("aiohttp", "redis", "uvloop", "segno", "store.redis_backend", "resolver.doh",
         "classguard.metrics", "classguard.web", "dashboard.app", "blocklists.download")


def test_import_linter_contracts_are_kept():
    linter = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(linter), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "broken" in done.stdout and "0 broken" in done.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph.modules):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_two_modules_import_each_other_even_through_others():
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_circle():
    graph = grimp.ImportGraph()
    for module in ("a", "b", "c", "d"):
        graph.add_module(module)
    graph.add_import(importer="a", imported="b")
    graph.add_import(importer="b", imported="c")
    graph.add_import(importer="c", imported="a")
    graph.add_import(importer="c", imported="d")
    assert _cycles(graph) == [["a", "b", "c"]]


def _function_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom):  # `from a import b` may import module a.b
                    found.extend((inner.lineno, f"{inner.module}.{alias.name}")
                                 for alias in inner.names)
                elif isinstance(inner, ast.Import):
                    found.extend((inner.lineno, alias.name) for alias in inner.names)
    return sorted(set(found))


def test_imports_inside_functions_are_only_lazy_loads_of_heavy_packages():
    wrong = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            lines = path.read_text().split("\n")
            for line, module in _function_imports(path):
                heavy = any(module == name or module.startswith(name + ".") for name in HEAVY)
                if not heavy or "# lazy:" not in lines[line - 1]:
                    wrong.append(f"{path.relative_to(ROOT)}:{line}: {lines[line - 1].strip()}")
    assert wrong == []


def test_both_stores_offer_the_whole_store_protocol():
    wanted = {name for name, _ in inspect.getmembers(Store, inspect.isfunction)
              if not name.startswith("_")}
    assert {"get_policy", "put_user", "device_data", "erase_device"} <= wanted
    for backend in (EmbeddedStore, RedisStore):
        missing = sorted(name for name in wanted if not callable(getattr(backend, name, None)))
        assert missing == [], backend.__name__
        for name in wanted:
            assert inspect.iscoroutinefunction(getattr(backend, name)) == \
                inspect.iscoroutinefunction(getattr(Store, name)), (backend.__name__, name)


# The abilities beyond Store each backend claims (store.protocol): the composition root finds
# them once with isinstance, which only sees names, so their signatures are compared here.
CLAIMED = {
    EmbeddedStore: (FileBacked,),
    RedisStore: (RedisKeyspace, SharesLists, CountsLoginFailures, ReportsHealth, KeepsCounters,
                 RecoversLostStore, PublishesChanges),
}


def _parameters(function) -> list[tuple[str, object]]:
    return [(parameter.name, parameter.kind)
            for parameter in inspect.signature(function).parameters.values()]


def test_each_store_offers_what_it_claims_with_the_protocols_signatures(tmp_path):
    instances = {EmbeddedStore: EmbeddedStore(tmp_path),
                 RedisStore: RedisStore("redis://127.0.0.1:1/0")}
    for backend, protocols in CLAIMED.items():
        for protocol in (Store, *protocols):
            for name, method in inspect.getmembers(protocol, inspect.isfunction):
                if name.startswith("_"):
                    continue
                offered = getattr(backend, name)
                assert inspect.iscoroutinefunction(offered) == inspect.iscoroutinefunction(method), \
                    (backend.__name__, name)
                assert _parameters(offered) == _parameters(method), (backend.__name__, name)
            if protocol is not Store:
                assert isinstance(instances[backend], protocol), (backend.__name__, protocol)


def test_the_embedded_store_has_none_of_the_shared_stores_abilities(tmp_path):
    assert StoreAbilities.of(EmbeddedStore(tmp_path)) == StoreAbilities()
    redis_store = RedisStore("redis://127.0.0.1:1/0")
    abilities = StoreAbilities.of(redis_store)
    assert all(getattr(abilities, field) is redis_store for field in abilities.__slots__)


def test_no_caller_probes_a_store_with_hasattr_or_getattr():
    """What a store offers beyond Store is a named protocol (store.protocol), found once."""
    probes = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                        and node.func.id in ("hasattr", "getattr") and node.args \
                        and "store" in ast.unparse(node.args[0]).lower():
                    probes.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert probes == []
