"""The Redis store (SPEC §7): the `Store` of many instances, and how each one lives through Redis
being away, or coming back empty.

Keys (under `classguard:`): `version` (INCR on every write), `marker` (an id set when the store
is created: a Redis that comes back without it has lost the store), `policy` (a hash: text,
version, updated_at, updated_by), `overrides` (a hash id -> JSON, expiring with the last one to
end), `audit` (a capped list, newest first), `minutes:DAY:DEVICE` (screen-time bitmaps merged
with BITOP OR, kept two days), `lists:manifest` and `lists:SHA256:N` (the compiled lists),
`user:NAME`, `token:SHA256` and `session:SHA256` (the dashboard accounts, with the sets `users`
and `tokens`).
Every write is one Lua script (compare-and-set included) and publishes on `changes`.

A Redis that comes back without the store (SPEC §7) is rebuilt by the instance holding the
highest version, with its policy, overrides, users and tokens (scripts.RESTORE); the others
adopt what the store then holds. Each server also keeps a copy of what it last read under
state_dir (recovery.SNAPSHOT_FILE), which it writes back when it starts on an empty Redis
instead of seeding.

Only a server's watcher (and its control commands) call this; the DNS path never does. While
Redis is unreachable every call fails at once with StoreUnavailable (after one log line), the
next attempt waiting a doubling backoff, and the server answers from its snapshot. Screen-time
minutes written meanwhile wait in a bounded buffer (drops counted).
"""

from store.records import StoreUnavailable
from store.redis_backend.backend import RedisStore
from store.redis_backend.connection import redacted_url
from store.redis_backend.lists import LIST_CHUNK_BYTES, artifact_sha256

__all__ = ["RedisStore", "StoreUnavailable", "LIST_CHUNK_BYTES", "artifact_sha256", "redacted_url"]
