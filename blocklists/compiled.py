"""The compiled lists: a compact hash table of every entry, built once, looked up per query.

Names are not kept: each entry is a 64-bit key in an open-addressing table (8 bytes) plus the index
of its "combo" (2 or 4 bytes), the set of lists that hold it and how. At a load factor of at most
0.7 that is about 15 bytes an entry, so millions of entries fit in little memory, and the table
loads from disk with one copy. A false match needs two independent CRC-32s to collide at once
(about 2^-64 per pair); a collision could only block a name, never unblock one.
"""

from __future__ import annotations

import ipaddress
import json
import os
import struct
import time
from zlib import crc32
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

MAGIC = b"CGLISTS1"
MAX_LOAD = 0.7

# How a list holds an entry: blocks the name and its subdomains, only the name, or excepts them.
SUFFIX, EXACT, EXCEPT_SUFFIX, EXCEPT_EXACT = range(4)


def name_key(name: str) -> int:
    """The 64-bit table key of a normalised (ASCII, lowercase) name; never 0 (0 marks a free slot)."""
    data = name.encode("ascii")
    key = (crc32(data) << 32) | crc32(data[::-1])
    return key or 1


@dataclass(frozen=True, slots=True)
class ListInfo:
    """One compiled list: a category as one source provides it."""

    category: str
    source: str
    usage: str = "black"  # black | white: the category's default use
    entries: int = 0
    networks: int = 0
    bad_lines: int = 0
    skipped: int = 0


@dataclass(slots=True)
class _Combo:
    suffix: frozenset[int]
    exact: frozenset[int]
    except_suffix: frozenset[int]
    except_exact: frozenset[int]

    def as_tuple(self) -> tuple[frozenset[int], ...]:
        return (self.suffix, self.exact, self.except_suffix, self.except_exact)


@dataclass(slots=True)
class CompiledLists:
    lists: list[ListInfo]
    keys: array  # 'Q', capacity a power of two
    combo_ids: array  # 'H' or 'I', parallel to keys
    combos: list[_Combo]
    networks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, frozenset[int]]] = field(default_factory=list)
    host_addresses: dict[str, frozenset[int]] = field(default_factory=dict)
    max_labels: int = 0
    built_at: float = 0.0

    @property
    def categories(self) -> dict[str, str]:
        """Category name -> its default usage."""
        return {info.category: info.usage for info in self.lists}

    @property
    def entry_count(self) -> int:
        return sum(info.entries for info in self.lists)

    def matching_lists(self, name: str) -> dict[int, str]:
        """Lists that hold `name` or a parent of it (after exceptions): list index -> matched entry."""
        if not self.lists:
            return {}
        data = name.encode("ascii")
        starts = [0]
        dot = data.find(b".")
        while dot >= 0:
            starts.append(dot + 1)
            dot = data.find(b".", dot + 1)
        keys, combo_ids, combos = self.keys, self.combo_ids, self.combos
        mask = len(keys) - 1
        matched: dict[int, str] = {}
        excepted: set[int] = set()
        for depth in range(max(0, len(starts) - self.max_labels), len(starts)):
            suffix = data[starts[depth]:]
            key = ((crc32(suffix) << 32) | crc32(suffix[::-1])) or 1
            slot = key & mask
            while True:
                found = keys[slot]
                if found == key or found == 0:
                    break
                slot = (slot + 1) & mask
            if found == 0:
                continue
            combo = combos[combo_ids[slot]]
            entry = name[starts[depth]:]
            excepted.update(combo.except_suffix)
            for index in combo.suffix:
                matched.setdefault(index, entry)
            if depth == 0:
                excepted.update(combo.except_exact)
                for index in combo.exact:
                    matched.setdefault(index, entry)
        for index in excepted:
            matched.pop(index, None)
        return matched

    def categories_of(self, name: str) -> dict[str, str]:
        """Categories that list `name` or a parent of it -> the entry that matched."""
        lists = self.lists
        found: dict[str, str] = {}
        for index, entry in self.matching_lists(name).items():
            found.setdefault(lists[index].category, entry)
        return found

    def categories_of_address(self, address: str) -> set[str]:
        """Categories whose lists hold this IP address (entries kept for answer inspection)."""
        lists = self.lists
        indexes = set(self.host_addresses.get(address, ()))
        if self.networks:
            ip = ipaddress.ip_address(address)
            for network, members in self.networks:
                if ip.version == network.version and ip in network:
                    indexes.update(members)
        return {lists[index].category for index in indexes}

    # -- persistence: one file, header JSON then the two raw arrays ------------------------------

    def save(self, path: Path) -> None:
        """Write atomically: a reader sees the old file or the new one, never half of one."""
        header = {
            "lists": [_info_dict(info) for info in self.lists],
            "combos": [[sorted(part) for part in combo.as_tuple()] for combo in self.combos],
            "networks": [[str(net), sorted(members)] for net, members in self.networks],
            "hosts": [[address, sorted(members)] for address, members in self.host_addresses.items()],
            "max_labels": self.max_labels,
            "built_at": self.built_at,
            "capacity": len(self.keys),
            "combo_typecode": self.combo_ids.typecode,
        }
        blob = json.dumps(header).encode("utf-8")
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        with open(temporary, "wb") as out:
            out.write(MAGIC + struct.pack("!Q", len(blob)) + blob)
            out.write(self.keys.tobytes())
            out.write(self.combo_ids.tobytes())
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)


def _info_dict(info: ListInfo) -> dict:
    return {name: getattr(info, name) for name in ListInfo.__slots__}


class ArtifactError(Exception):
    """The compiled lists file is missing, truncated or not ours."""


def load(path: Path) -> CompiledLists:
    try:
        with open(path, "rb") as source:
            if source.read(len(MAGIC)) != MAGIC:
                raise ArtifactError(f"{path}: not a classguard compiled lists file")
            (length,) = struct.unpack("!Q", source.read(8))
            header = json.loads(source.read(length))
            capacity = header["capacity"]
            keys = array("Q")
            keys.frombytes(source.read(capacity * keys.itemsize))
            combo_ids = array(header["combo_typecode"])
            combo_ids.frombytes(source.read(capacity * combo_ids.itemsize))
    except (OSError, ValueError, KeyError, struct.error) as exc:
        raise ArtifactError(f"{path}: cannot read compiled lists ({exc})") from exc
    if len(keys) != capacity or len(combo_ids) != capacity:
        raise ArtifactError(f"{path}: truncated compiled lists file")
    return CompiledLists(
        lists=[ListInfo(**info) for info in header["lists"]],
        keys=keys,
        combo_ids=combo_ids,
        combos=[_Combo(*(frozenset(part) for part in parts)) for parts in header["combos"]],
        networks=[(ipaddress.ip_network(net), frozenset(members)) for net, members in header["networks"]],
        host_addresses={address: frozenset(members) for address, members in header["hosts"]},
        max_labels=header["max_labels"],
        built_at=header["built_at"],
    )


class Compiler:
    """Adds lists one at a time into a pre-sized table; the names themselves are not kept."""

    def __init__(self, expected_entries: int):
        capacity = 8
        while capacity * MAX_LOAD < max(expected_entries, 1):
            capacity *= 2
        self._keys = array("Q", bytes(8 * capacity))
        self._combo_ids = array("I", bytes(4 * capacity))
        self._combos: list[_Combo] = [_Combo(frozenset(), frozenset(), frozenset(), frozenset())]
        self._combo_index: dict[tuple, int] = {self._combos[0].as_tuple(): 0}
        self._lists: list[ListInfo] = []
        self._addresses: dict[str, set[int]] = {}
        self._networks: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, set[int]] = {}
        self._used = 0
        self._max_labels = 0

    def add_list(self, info: ListInfo, *, suffix: Iterable[str] = (), exact: Iterable[str] = (),
                 except_suffix: Iterable[str] = (), except_exact: Iterable[str] = (),
                 networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = ()) -> None:
        index = len(self._lists)
        self._lists.append(info)
        for kind, names in ((SUFFIX, suffix), (EXACT, exact), (EXCEPT_SUFFIX, except_suffix),
                            (EXCEPT_EXACT, except_exact)):
            for name in names:
                self._insert(name, index, kind)
        for network in networks:
            if network.num_addresses == 1:
                self._addresses.setdefault(str(network.network_address), set()).add(index)
            else:
                self._networks.setdefault(network, set()).add(index)

    def _insert(self, name: str, list_index: int, kind: int) -> None:
        key = name_key(name)
        keys = self._keys
        mask = len(keys) - 1
        slot = key & mask
        while True:
            found = keys[slot]
            if found == key:
                break
            if found == 0:
                if (self._used + 1) > len(keys) * MAX_LOAD:
                    self._grow()
                    self._insert(name, list_index, kind)
                    return
                keys[slot] = key
                self._used += 1
                labels = name.count(".") + 1
                if labels > self._max_labels:
                    self._max_labels = labels
                break
            slot = (slot + 1) & mask
        parts = list(self._combos[self._combo_ids[slot]].as_tuple())
        if list_index in parts[kind]:
            return
        parts[kind] = parts[kind] | {list_index}
        self._combo_ids[slot] = self._intern(tuple(parts))

    def _intern(self, parts: tuple) -> int:
        index = self._combo_index.get(parts)
        if index is None:
            index = len(self._combos)
            self._combos.append(_Combo(*parts))
            self._combo_index[parts] = index
        return index

    def _grow(self) -> None:
        old_keys, old_ids = self._keys, self._combo_ids
        capacity = len(old_keys) * 2
        self._keys = array("Q", bytes(8 * capacity))
        self._combo_ids = array("I", bytes(4 * capacity))
        mask = capacity - 1
        for key, combo in zip(old_keys, old_ids):
            if key:
                slot = key & mask
                while self._keys[slot]:
                    slot = (slot + 1) & mask
                self._keys[slot] = key
                self._combo_ids[slot] = combo

    def finish(self) -> CompiledLists:
        combo_ids = self._combo_ids
        if len(self._combos) <= 0xFFFF:
            combo_ids = array("H", combo_ids)
        return CompiledLists(
            lists=self._lists,
            keys=self._keys,
            combo_ids=combo_ids,
            combos=self._combos,
            networks=[(net, frozenset(members)) for net, members in self._networks.items()],
            host_addresses={address: frozenset(members) for address, members in self._addresses.items()},
            max_labels=self._max_labels,
            built_at=time.time(),
        )


def empty() -> CompiledLists:
    return Compiler(0).finish()
