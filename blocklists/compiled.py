"""The compiled lists: every entry as a 64-bit key in one bucketed table, mapped from disk.

Names are not kept. An entry's key is a 64-bit BLAKE2b of the name keyed with a secret drawn at
random for each compile and kept in the file's header (`hash_key`): who does not know that secret
cannot craft a name whose key equals a listed one (an unkeyed hash such as a pair of CRC-32s can be
solved for, and a name made to collide with an exception or an allowlist entry would escape a
block). A chance collision needs two names to agree on 64 bits (about 2^-64 per pair). The file
holds a JSON header, then three arrays, each 8-byte aligned and in the machine's byte order:

- `keys`: n × u64, grouped by bucket (a key's bucket is its top `bits` bits; there are one to two
  buckets a key);
- `offsets`: 2^bits + 1 × u32, where each bucket starts in `keys`;
- `combo_ids`: n × u16 (or u32), the "combo" of each key: which lists hold it, and how.

That is 14 to 18 bytes an entry. `load` maps the file read-only instead of reading it: loading
takes milliseconds whatever the size, pages come in as lookups touch them, and dropping the last
reference to a `CompiledLists` unmaps it at once. A lookup hashes each suffix of the name whose
label count occurs in the table, reads two offsets, and compares the (on average under one) keys
of that bucket: pure Python on `memoryview`s, a few microseconds.
"""

from __future__ import annotations

import ipaddress
import json
import mmap
import os
import struct
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

from common.errors import ClassguardError

try:  # hashlib's own blake2b, without loading OpenSSL's libcrypto (4 MiB of the compile worker)
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - a Python built without it
    from hashlib import blake2b

MAGIC = b"CGLISTS3"  # 3: keyed BLAKE2b keys (2 had CRC-32 pairs, which could be solved for)
MAX_BITS = 32  # offsets are u32
HASH_KEY_BYTES = 16
ALIGN = 8

# How a list holds an entry: blocks the name and its subdomains, only the name, or excepts them.
SUFFIX, EXACT, EXCEPT_SUFFIX, EXCEPT_EXACT = range(4)
KINDS = 4


def new_hash_key() -> bytes:
    """The secret of one compile: fresh for every build, so no key can be solved for ahead."""
    return os.urandom(HASH_KEY_BYTES)


def key_hasher(hash_key: bytes) -> Callable[[], Any]:
    """A fresh BLAKE2b state with the key already absorbed: `h = hasher(); h.update(name);
    h.digest()` is the 8 bytes of a name's key (big-endian: its top bits make the bucket and the
    compile's partition). Copying that state is a third faster than keying a new one each time."""
    if len(hash_key) != HASH_KEY_BYTES:
        raise ArtifactError(f"a hash key of {len(hash_key)} bytes, not {HASH_KEY_BYTES}")
    return blake2b(digest_size=8, key=hash_key).copy


def keys_of(datas: Iterable[bytes], hasher: Callable[[], Any]) -> list[int]:
    """The keys of many encoded names (the compile's hot loop)."""
    keys: list[int] = []
    append, from_bytes = keys.append, int.from_bytes
    for data in datas:
        state = hasher()
        state.update(data)
        append(from_bytes(state.digest()))
    return keys


def name_key(name: str, hash_key: bytes) -> int:
    """The 64-bit table key of a normalised (ASCII, lowercase, no trailing dot) name."""
    return keys_of([name.encode("ascii")], key_hasher(hash_key))[0]


def table_bits(key_count: int) -> int:
    """Bucket count 2^bits for this many keys: between one and two buckets a key, 256 at least."""
    return min(MAX_BITS, max(8, key_count.bit_length()))


@dataclass(frozen=True, slots=True)
class ListInfo:
    """One compiled list: a category as one source provides it."""

    category: str
    source: str
    usage: str = "black"  # black | white: the category's default use
    entries: int = 0  # distinct names
    networks: int = 0  # IP entries (addresses and networks)
    bad_lines: int = 0
    skipped: int = 0


@dataclass(frozen=True, slots=True)
class _Combo:
    """The lists holding one key, by how they hold it (list indexes)."""

    suffix: tuple[int, ...]
    exact: tuple[int, ...]
    except_suffix: tuple[int, ...]
    except_exact: tuple[int, ...]

    @classmethod
    def from_codes(cls, codes: Iterable[int]) -> _Combo:
        """Codes are `list_index * KINDS + kind`."""
        parts: list[list[int]] = [[], [], [], []]
        for code in sorted(codes):
            parts[code % KINDS].append(code // KINDS)
        return cls(*(tuple(part) for part in parts))

    def codes(self) -> list[int]:
        return sorted(index * KINDS + kind for kind, part in enumerate(self.as_tuple())
                      for index in part)

    def as_tuple(self) -> tuple[tuple[int, ...], ...]:
        return (self.suffix, self.exact, self.except_suffix, self.except_exact)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ArtifactError(ClassguardError):
    """The compiled lists file is missing, truncated or not ours."""


class CompiledLists:
    """Read-only after construction; replaced whole when the lists change."""

    __slots__ = (
        "lists", "combos", "networks", "host_addresses", "label_counts", "built_at", "inputs",
        "bits", "key_count", "hash_key", "_keys", "_offsets", "_combo_ids", "_table", "_buffer",
        "__weakref__",
    )

    def __init__(self, header: dict, buffer) -> None:
        """`buffer`: the whole file (an mmap, or bytes); the arrays are views into it."""
        self.lists = [ListInfo(**info) for info in header["lists"]]
        self.combos = [_Combo.from_codes(codes) for codes in header["combos"]]
        self.networks: list[tuple[Network, frozenset[int]]] = [
            (ipaddress.ip_network(net), frozenset(members)) for net, members in header["networks"]
        ]
        self.host_addresses: dict[str, frozenset[int]] = {
            address: frozenset(members) for address, members in header["hosts"]
        }
        self.label_counts = frozenset(header["label_counts"])
        self.built_at: float = header["built_at"]
        self.inputs: dict = header.get("inputs", {})
        self.bits: int = header["bits"]
        self.key_count: int = header["key_count"]
        self.hash_key: bytes = bytes.fromhex(header["hash_key"])
        self._buffer = buffer
        view = memoryview(buffer)
        sections = header["sections"]
        self._keys = _section(view, sections["keys"], "Q", self.key_count)
        self._offsets = _section(view, sections["offsets"], "I", (1 << self.bits) + 1)
        self._combo_ids = _section(view, sections["combo_ids"], header["combo_typecode"],
                                   self.key_count)
        # What a lookup needs, in one attribute: (keys, offsets, combo ids, bucket shift, label
        # counts present, combos, the keyed hash).
        self._table = (self._keys, self._offsets, self._combo_ids, 64 - self.bits,
                       self.label_counts, self.combos, key_hasher(self.hash_key))

    # -- what the policy engine asks, per query -------------------------------------------------

    @property
    def categories(self) -> dict[str, str]:
        """Category name -> its default usage."""
        return {info.category: info.usage for info in self.lists}

    @property
    def entry_count(self) -> int:
        return sum(info.entries for info in self.lists)

    @property
    def size_bytes(self) -> int:
        """Bytes of the three arrays (what lookups touch)."""
        return self._keys.nbytes + self._offsets.nbytes + self._combo_ids.nbytes

    def matching_lists(self, name: str) -> dict[int, str]:
        """Lists that hold `name` or a parent of it (after exceptions): list index -> matched entry.

        The matched entry is the most specific one: `a.b.example` listed, `b.example` too, the
        query `x.a.b.example` matches `a.b.example`.
        """
        hits = self._probe(name)
        return self._matched(name, hits) if hits else {}

    def _matched(self, name: str, hits: list[tuple[int, int, _Combo]]) -> dict[int, str]:
        matched: dict[int, str] = {}
        excepted: set[int] = set()
        last = name.count(".") + 1
        # Shortest suffix first, so that a more specific entry overwrites a parent's.
        for labels, start, combo in hits:
            entry = name[start:]
            for list_index in combo.suffix:
                matched[list_index] = entry
            excepted.update(combo.except_suffix)
            if labels == last:
                for list_index in combo.exact:
                    matched[list_index] = entry
                excepted.update(combo.except_exact)
        for list_index in excepted:
            matched.pop(list_index, None)
        return matched

    def categories_of(self, name: str) -> dict[str, str]:
        """Categories that list `name` or a parent of it -> the (most specific) entry that matched."""
        hits = self._probe(name)
        if not hits:  # the usual case, kept to one call
            return {}
        lists = self.lists
        found: dict[str, str] = {}
        for index, entry in self._matched(name, hits).items():
            category = lists[index].category
            previous = found.get(category)
            if previous is None or len(entry) > len(previous):
                found[category] = entry
        return found

    def _probe(self, name: str) -> list[tuple[int, int, _Combo]]:
        """The name's suffixes found in the table: (label count, start in name, combo)."""
        keys, offsets, combo_ids, shift, wanted, combos, hasher = self._table
        data = name.encode("ascii")
        from_bytes = int.from_bytes
        hits = []
        start = len(data) + 1
        labels = 0
        for part in reversed(data.split(b".")):
            start -= len(part) + 1
            labels += 1
            if labels not in wanted:
                continue
            state = hasher()
            state.update(data[start:] if start else data)
            key = from_bytes(state.digest())
            bucket = key >> shift
            index = offsets[bucket]
            end = offsets[bucket + 1]
            while index < end:
                if keys[index] == key:
                    hits.append((labels, start, combos[combo_ids[index]]))
                    break
                index += 1
        return hits

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

    # -- persistence ----------------------------------------------------------------------------

    def header(self) -> dict:
        return make_header(
            lists=self.lists, combos=self.combos, networks=self.networks,
            host_addresses=self.host_addresses, label_counts=self.label_counts,
            built_at=self.built_at, inputs=self.inputs, key_count=self.key_count, bits=self.bits,
            combo_typecode=self._combo_ids.format, hash_key=self.hash_key)

    def save(self, path: Path) -> None:
        """Write atomically: a reader sees the old file or the new one, never half of one."""
        write_artifact(path, self.header(), [self._keys, self._offsets, self._combo_ids])


def _section(view: memoryview, where: list[int], typecode: str, count: int) -> memoryview:
    offset, length = where
    section = view[offset:offset + length]
    if len(section) != length or length != count * struct.calcsize(typecode):
        raise ArtifactError("truncated compiled lists file")
    return section.cast(typecode)


def make_header(*, lists: list[ListInfo], combos: list[_Combo],
                networks: Iterable[tuple[Network, Iterable[int]]],
                host_addresses: dict[str, Iterable[int]], label_counts: Iterable[int],
                built_at: float, inputs: dict, key_count: int, bits: int,
                combo_typecode: str, hash_key: bytes) -> dict:
    return {
        "lists": [{name: getattr(info, name) for name in ListInfo.__slots__} for info in lists],
        "combos": [combo.codes() for combo in combos],
        "networks": [[str(net), sorted(members)] for net, members in networks],
        "hosts": [[address, sorted(members)] for address, members in host_addresses.items()],
        "label_counts": sorted(label_counts),
        "built_at": built_at,
        "inputs": inputs,
        "key_count": key_count,
        "bits": bits,
        "combo_typecode": combo_typecode,
        "hash_key": hash_key.hex(),
        "byteorder": sys.byteorder,
    }


def _layout(header: dict, lengths: list[int]) -> bytes:
    """The header bytes, with `sections` filled in for arrays of these byte lengths."""
    names = ("keys", "offsets", "combo_ids")
    # The header's own length moves the sections, and their offsets' digits lengthen the header:
    # offsets only grow, so this settles, but after an alignment step it can take a few passes.
    sections = {name: [0, length] for name, length in zip(names, lengths)}
    blob = b""
    for _ in range(16):
        header["sections"] = sections
        blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
        position = _aligned(len(MAGIC) + 8 + len(blob))
        moved = False
        for name, length in zip(names, lengths):
            if sections[name][0] != position:
                sections[name] = [position, length]
                moved = True
            position = _aligned(position + length)
        if not moved:
            return blob
    raise AssertionError("header layout did not settle")


def _aligned(position: int) -> int:
    return -(-position // ALIGN) * ALIGN


def write_artifact(path: Path, header: dict, arrays: list) -> None:
    """Header, then each array (bytes-like, or an open file to copy with its length) aligned."""
    lengths = [_byte_length(item) for item in arrays]
    blob = _layout(header, lengths)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as out:
        out.write(MAGIC + struct.pack("!Q", len(blob)) + blob)
        for item, (offset, length) in zip(arrays, header["sections"].values()):
            out.write(b"\0" * (offset - out.tell()))
            _write_item(out, item, length)
        out.write(b"\0" * (_aligned(out.tell()) - out.tell()))
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


def _byte_length(item) -> int:
    if isinstance(item, tuple):  # (open file, byte length): copied in chunks
        return item[1]
    return memoryview(item).nbytes


def _write_item(out: BinaryIO, item, length: int) -> None:
    if isinstance(item, tuple):
        source, _ = item
        source.seek(0)
        remaining = length
        while remaining:
            chunk = source.read(min(remaining, 1 << 20))
            if not chunk:
                raise OSError("short copy into the compiled lists file")
            out.write(chunk)
            remaining -= len(chunk)
    else:
        out.write(memoryview(item).cast("B"))


def read_header(path: Path) -> dict:
    """Only the header: what the file holds and was built from, without mapping the arrays."""
    try:
        with open(path, "rb") as source:
            return _read_header(source, path)
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read compiled lists ({exc})") from exc


def _read_header(source: BinaryIO, path: Path) -> dict:
    if source.read(len(MAGIC)) != MAGIC:
        raise ArtifactError(f"{path}: not a classguard compiled lists file (or an older format)")
    try:
        (length,) = struct.unpack("!Q", source.read(8))
        header = json.loads(source.read(length))
    except (ValueError, struct.error) as exc:
        raise ArtifactError(f"{path}: cannot read compiled lists ({exc})") from exc
    if not isinstance(header, dict) or header.get("byteorder") != sys.byteorder:
        raise ArtifactError(f"{path}: compiled lists from a machine of another byte order")
    return header


def load(path: Path) -> CompiledLists:
    """Map the file read-only; it stays valid after the file is replaced (atomic writes)."""
    try:
        with open(path, "rb") as source:
            header = _read_header(source, path)
            if os.fstat(source.fileno()).st_size == 0:
                raise ArtifactError(f"{path}: empty compiled lists file")
            mapped = mmap.mmap(source.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: cannot read compiled lists ({exc})") from exc
    if hasattr(mmap, "MADV_WILLNEED"):
        # Read ahead in the background, so that after a reboot (the file not in the page cache)
        # the first queries do not wait for the disk one page at a time.
        mapped.madvise(mmap.MADV_WILLNEED)
    return from_buffer(header, mapped, path)


def from_buffer(header: dict, buffer, path: Path | str = "<memory>") -> CompiledLists:
    try:
        return CompiledLists(header, buffer)
    except ArtifactError as exc:
        raise ArtifactError(f"{path}: {exc}") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: cannot read compiled lists ({exc!r})") from exc


def empty() -> CompiledLists:
    """Lists with no entry (what an empty configuration compiles to)."""

    bits = table_bits(0)
    arrays = [b"", bytes(4 * ((1 << bits) + 1)), b""]
    header = make_header(lists=[], combos=[_Combo((), (), (), ())], networks=[],
                         host_addresses={}, label_counts=[], built_at=0.0, inputs={},
                         key_count=0, bits=bits, combo_typecode="H", hash_key=new_hash_key())
    blob = _layout(header, [len(a) for a in arrays])
    out = BytesIO()
    out.write(MAGIC + struct.pack("!Q", len(blob)) + blob)
    for item, (offset, _length) in zip(arrays, header["sections"].values()):
        out.write(b"\0" * (offset - out.tell()))
        out.write(item)
    return from_buffer(header, out.getvalue())
