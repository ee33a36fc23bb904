"""The compiled lists in Redis (SPEC §7): chunks of at most 1 MB and a manifest with their
checksum; one instance publishes, the others fetch."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path

import redis.asyncio as aioredis

from store.embedded import write_atomically
from store.records import StoreError
from store.redis_backend.connection import RedisConnection

LIST_CHUNK_BYTES = 1 << 20  # SPEC §7: no key above 1 MB


class SharedLists(RedisConnection):
    """`lists:manifest` naming the chunks `lists:SHA256:N` of the artifact it describes."""

    async def lists_manifest(self) -> dict | None:
        raw = await self.run(lambda r: r.get(self.key("lists:manifest")))
        return None if raw is None else json.loads(raw)

    async def publish_lists(self, path: Path, built_at: float | None = None,
                            status: str | None = None) -> dict:
        """The artifact file's bytes as chunks, then the manifest that names them (readers check
        the sha256, so a reader racing a publisher retries rather than loads a mix). `status`,
        the refresh report, travels in the manifest: an instance that takes these lists then
        schedules its next refresh from it instead of refreshing at once."""
        data = await asyncio.to_thread(Path(path).read_bytes)
        digest = hashlib.sha256(data).hexdigest()
        chunks = [data[offset:offset + LIST_CHUNK_BYTES]
                  for offset in range(0, len(data), LIST_CHUNK_BYTES)] or [b""]
        manifest = {"sha256": digest, "size": len(data), "chunks": len(chunks),
                    "chunk_bytes": LIST_CHUNK_BYTES, "built_at": built_at or time.time(),
                    "by": self.instance, "status": status}

        async def write(r: aioredis.Redis) -> None:
            async with r.pipeline(transaction=True) as pipe:
                for index, chunk in enumerate(chunks):
                    pipe.set(self.key(f"lists:{digest}:{index}"), chunk)
                pipe.set(self.key("lists:manifest"), json.dumps(manifest))
                old = await r.get(self.key("lists:manifest"))
                await pipe.execute()
            if old is not None:  # the previous artifact's chunks, after a grace for readers
                previous = json.loads(old)
                if previous.get("sha256") != digest:
                    await r.delete(*[self.key(f"lists:{previous['sha256']}:{index}")
                                     for index in range(previous.get("chunks", 0))] or ["-"])

        await self.run(write)
        self.counters["lists_published"] += 1
        return manifest

    async def fetch_lists(self, path: Path, status_path: Path | None = None) -> dict | None:
        """Write the published artifact to `path` (atomically) when it differs from the file,
        and the publisher's refresh report to `status_path`; the manifest, or None when Redis
        holds no lists."""
        manifest = await self.lists_manifest()
        if manifest is None:
            return None
        if await asyncio.to_thread(_file_sha256, Path(path)) == manifest["sha256"]:
            return manifest
        keys = [self.key(f"lists:{manifest['sha256']}:{index}") for index in range(manifest["chunks"])]
        chunks = await self.run(lambda r: r.mget(keys))
        if any(chunk is None for chunk in chunks):
            raise StoreError("the lists in Redis changed while being read; try again")
        data = b"".join(chunks)
        if hashlib.sha256(data).hexdigest() != manifest["sha256"] or len(data) != manifest["size"]:
            raise StoreError("the lists in Redis do not match their manifest's checksum")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(write_atomically, Path(path), data)
        if status_path is not None and manifest.get("status"):
            await asyncio.to_thread(write_atomically, Path(status_path), manifest["status"].encode())
        self.counters["lists_fetched"] += 1
        return manifest


def _file_sha256(path: Path) -> str | None:
    try:
        with open(path, "rb") as file:
            return hashlib.file_digest(file, "sha256").hexdigest()
    except FileNotFoundError:
        return None

def artifact_sha256(path: Path) -> str | None:
    return _file_sha256(path)
