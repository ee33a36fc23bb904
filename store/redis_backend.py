"""The Redis store (SPEC §7): the `Store` of many instances, and how each one lives through Redis
being away, or coming back empty.

Keys (under `classguard:`): `version` (INCR on every write), `marker` (an id set when the store
is created: a Redis that comes back without it has lost the store), `policy` (a hash: text,
version, updated_at, updated_by), `overrides` (a hash id -> JSON, expiring with the last one to
end), `audit` (a capped list, newest first), `minutes:DAY:DEVICE` (screen-time bitmaps merged
with BITOP OR, kept two days), `lists:manifest` and `lists:chunk:N` (the compiled lists),
`user:NAME`, `token:SHA256` and `session:SHA256` (the dashboard accounts, with the sets `users`
and `tokens`).
Every write is one Lua script (compare-and-set included) and publishes on `changes`.

A Redis that comes back without the store (SPEC §7) is rebuilt by the instance holding the
highest version, with its policy, overrides, users and tokens (_RESTORE); the others adopt what
the store then holds. Each server also keeps a copy of what it last read under state_dir
(SNAPSHOT_FILE), which it writes back when it starts on an empty Redis instead of seeding.

Only a server's watcher (and its control commands) call this; the DNS path never does. While
Redis is unreachable every call fails at once with StoreUnavailable (after one log line), the
next attempt waiting a doubling backoff, and the server answers from its snapshot. Screen-time
minutes written meanwhile wait in a bounded buffer (drops counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from policies.model import Override
from store.embedded import write_atomically
from store.records import (
    ApiToken, AuditEntry, NotFound, Session, StoredPolicy, StoreError, StoreUnavailable, User,
    VersionConflict, describe_override, describe_token, describe_user, device_record, minutes_of,
    policy_without,
)

log = logging.getLogger("classguard.store.redis")

__all__ = ["RedisStore", "StoreUnavailable", "LIST_CHUNK_BYTES"]

PREFIX = "classguard:"
AUDIT_KEPT = 10_000  # entries; older ones are trimmed away
MINUTES_TTL = 2 * 86400  # seconds: today and yesterday, as the embedded store keeps
MINUTES_BUFFER_MAX = 200_000  # device-days of minutes held while Redis is away; more are dropped
LIST_CHUNK_BYTES = 1 << 20  # SPEC §7: no key above 1 MB
ERASE_RETRIES = 5  # times a record's removal is tried again when the policy changed meanwhile
CONNECT_TIMEOUT = 1.0  # seconds; the watcher is the one waiting, never a DNS answer
# one immediate retry: a pooled connection to a Redis that restarted fails once, then reconnects
COMMAND_TIMEOUT = 2.0
BACKOFF_FIRST, BACKOFF_MAX = 0.25, 2.0  # seconds between attempts while Redis is away
SENTINEL_SCHEME = "redis+sentinel"


_PUT_POLICY = """
local cur = tonumber(redis.call('HGET', KEYS[2], 'version') or '0')
local marker = redis.call('GET', KEYS[4])
if ARGV[9] ~= '' and marker ~= ARGV[9] then return {'lost', cur} end
if ARGV[3] ~= '' and tonumber(ARGV[3]) ~= cur then return {'conflict', cur} end
if cur > 0 and redis.call('HGET', KEYS[2], 'text') == ARGV[1] then return {'same', cur} end
local v = cur + 1
redis.call('HSET', KEYS[2], 'text', ARGV[1], 'version', v, 'updated_at', ARGV[4], 'updated_by', ARGV[2])
local g = redis.call('INCR', KEYS[1])
if not marker then redis.call('SET', KEYS[4], ARGV[10]) end
local before = ARGV[6]
if before == '' and cur > 0 then before = 'version ' .. cur end
local after = ARGV[7]
if after == '' then after = 'version ' .. v end
redis.call('LPUSH', KEYS[3], cjson.encode({at=tonumber(ARGV[4]), actor=ARGV[2], action=ARGV[5],
                                            before=before, after=after}))
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[8]) - 1)
redis.call('PUBLISH', KEYS[5], ARGV[11] .. ' ' .. g)
return {'ok', v, g, redis.call('GET', KEYS[4])}
"""

# overrides: ARGV = op (add|cancel), id, json (add), now, audit json (add) or actor (cancel),
# audit cap, known marker, new marker, instance id
_OVERRIDE = """
local marker = redis.call('GET', KEYS[4])
if ARGV[7] ~= '' and marker ~= ARGV[7] then return {'lost'} end
local now = tonumber(ARGV[4])
local all = redis.call('HGETALL', KEYS[2])
local last = 0
for i = 1, #all, 2 do
  local until_ = cjson.decode(all[i + 1])['until']
  if until_ <= now then redis.call('HDEL', KEYS[2], all[i]) elseif until_ > last then last = until_ end
end
local found = redis.call('HGET', KEYS[2], ARGV[2])
local entry
if ARGV[1] == 'add' then
  if found then return {'exists'} end
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
  local until_ = cjson.decode(ARGV[3])['until']
  if until_ > last then last = until_ end
  entry = ARGV[5]
else
  if not found then return {'missing'} end
  redis.call('HDEL', KEYS[2], ARGV[2])
  entry = ARGV[5]
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('PEXPIREAT', KEYS[2], math.ceil(last * 1000) + 60000)
end
local g = redis.call('INCR', KEYS[1])
if not marker then redis.call('SET', KEYS[4], ARGV[8]) end
redis.call('LPUSH', KEYS[3], entry)
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[6]) - 1)
redis.call('PUBLISH', KEYS[5], ARGV[9] .. ' ' .. g)
return {'ok', g, found or '', redis.call('GET', KEYS[4])}
"""

# write an instance's state back into a store that lost it (SPEC §7): only when the store has no
# marker, or holds a lower version than ours whatever its marker; a store at our version or
# higher (a tie included) is left alone and the caller adopts it, so instances converge.
# Replaces the policy, the overrides, the users and the tokens (their records and index sets).
# ARGV = marker, version, policy text ('' for none), policy version, updated_at, updated_by,
#        overrides json list, audit entry json, instance id, users json list, tokens json list,
#        key prefix
# returns {1} when written, else {0, the stored version, the stored marker}
_RESTORE = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local marker = redis.call('GET', KEYS[4])
if marker and cur >= tonumber(ARGV[2]) then return {0, cur, marker} end
redis.call('DEL', KEYS[2], KEYS[3])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[2], 'text', ARGV[3], 'version', ARGV[4], 'updated_at', ARGV[5],
             'updated_by', ARGV[6])
end
local last = 0
for _, item in ipairs(cjson.decode(ARGV[7])) do
  redis.call('HSET', KEYS[3], item['id'], item['json'])
  if item['until'] > last then last = item['until'] end
end
if last > 0 then redis.call('PEXPIREAT', KEYS[3], math.ceil(last * 1000) + 60000) end
for index, records in pairs({[KEYS[7]] = {ARGV[10], 'user:'}, [KEYS[8]] = {ARGV[11], 'token:'}}) do
  for _, name in ipairs(redis.call('SMEMBERS', index)) do
    redis.call('DEL', ARGV[12] .. records[2] .. name)
  end
  redis.call('DEL', index)
  for _, item in ipairs(cjson.decode(records[1])) do
    redis.call('SET', ARGV[12] .. records[2] .. item['name'], item['json'])
    redis.call('SADD', index, item['name'])
  end
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[4], ARGV[1])
redis.call('LPUSH', KEYS[5], ARGV[8])
redis.call('PUBLISH', KEYS[6], ARGV[9] .. ' ' .. ARGV[2])
return {1}
"""

# a dashboard account record (a user, a token): the record, its name in its index set, the
# audit entry; it moves `version`, so every instance's watcher reads the accounts again and
# holds them for a rebuild. ARGV = known marker, new marker, record json, name, audit json,
# audit cap, instance id
_RECORD = """
local marker = redis.call('GET', KEYS[1])
if ARGV[1] ~= '' and marker ~= ARGV[1] then return {'lost'} end
redis.call('SET', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[4])
redis.call('LPUSH', KEYS[4], ARGV[5])
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[6]) - 1)
local g = redis.call('INCR', KEYS[5])
if not marker then redis.call('SET', KEYS[1], ARGV[2]) end
redis.call('PUBLISH', KEYS[6], ARGV[7] .. ' ' .. g)
return {'ok', g, redis.call('GET', KEYS[1])}
"""

# removing a user: only the record read (ARGV[2]) goes, with its name in the index and the audit
# entry; moves `version` like _RECORD. ARGV = known marker, record json read, name, audit json,
# audit cap, instance id
_REMOVE_RECORD = """
local marker = redis.call('GET', KEYS[1])
if ARGV[1] ~= '' and marker ~= ARGV[1] then return {'lost'} end
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return {'changed'} end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[3])
redis.call('LPUSH', KEYS[4], ARGV[4])
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[5]) - 1)
local g = redis.call('INCR', KEYS[5])
redis.call('PUBLISH', KEYS[6], ARGV[6] .. ' ' .. g)
return {'ok', g}
"""

SNAPSHOT_FILE = "redis-snapshot.json"  # under state_dir: what this instance last read from Redis
SNAPSHOT_FORMAT = 1


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path}"


redacted_url = _redacted  # a store URL without its password, for messages outside this module


def _sentinel_client(url: str, **options) -> aioredis.Redis:
    """redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]"""
    from redis.asyncio.sentinel import Sentinel  # lazy: only for a redis+sentinel:// store

    parts = urlsplit(url)
    netloc = parts.netloc
    password = None
    if "@" in netloc:
        credentials, netloc = netloc.rsplit("@", 1)
        password = unquote(credentials.partition(":")[2]) or None
    hosts = []
    for item in netloc.split(","):
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = rest.lstrip(":")
        elif ":" in item:
            host, _, port = item.rpartition(":")
        else:
            host, port = item, ""
        hosts.append((host, int(port or 26379)))
    path = [part for part in parts.path.split("/") if part]
    if not path:
        raise StoreError("store: redis+sentinel:// needs the service name: "
                         "redis+sentinel://HOST:26379,HOST:26379/SERVICE")
    db = int(path[1]) if len(path) > 1 else 0
    sentinel = Sentinel(hosts, socket_timeout=options["socket_timeout"],
                        sentinel_kwargs={"socket_timeout": options["socket_timeout"]})
    return sentinel.master_for(path[0], db=db, password=password, **options)


class RedisStore:
    """The store in one Redis shared by every instance (SPEC §7). See the module docstring."""

    def __init__(self, url: str, *, prefix: str = PREFIX, state_dir: Path | str | None = None) -> None:
        self.url = url
        # where this instance keeps a copy of what it last read (SNAPSHOT_FILE): a server that
        # starts on a Redis that lost the store writes that back instead of seeding the file
        self.snapshot_path = None if state_dir is None else Path(state_dir) / SNAPSHOT_FILE
        query = parse_qs(urlsplit(url).query)
        self.prefix = query.get("prefix", [prefix])[0]
        self.instance = secrets.token_hex(6)  # our own pub/sub echoes are ignored
        self._client: aioredis.Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._down_since: float | None = None
        self._next_try = 0.0
        self._backoff = BACKOFF_FIRST
        self._marker: str | None = None  # the store's id as first seen
        self._seen_version = 0
        self._policy: StoredPolicy | None = None  # the snapshot last read: what we write back
        self._overrides: list[Override] = []
        # the dashboard accounts as last read (small): a rebuild writes them back too
        self._users: dict[str, User] = {}
        self._tokens: dict[str, ApiToken] = {}
        self._snapshot_written: str | None = None
        # moves when this instance adopts another instance's store (a lost store someone else
        # rebuilt): the watcher then reads everything again, even at an equal version
        self.generation = 0
        self._minutes_buffer: dict[str, dict[str, bytes]] = {}
        self._subscriber: asyncio.Task | None = None
        self.changed: asyncio.Event | None = None
        # exported by classguard.metrics (STORE_COUNTERS) as classguard_store_*_total
        self.counters = {"outages": 0, "reconnects": 0, "lost_store": 0, "restored": 0,
                         "minutes_dropped": 0, "lists_published": 0, "lists_fetched": 0}

    def __repr__(self) -> str:
        return f"RedisStore({_redacted(self.url)!r})"

    def key(self, name: str) -> str:
        return self.prefix + name

    # -- the connection, its outages and the lost-store check

    def _connect(self) -> aioredis.Redis:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            options = dict(socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=COMMAND_TIMEOUT,
                           retry=Retry(NoBackoff(), 1), health_check_interval=0)
            if urlsplit(self.url).scheme == SENTINEL_SCHEME:
                self._client = _sentinel_client(self.url, **options)
            else:
                self._client = aioredis.Redis.from_url(self.url.split("?")[0], **options)
            self._loop = loop
        return self._client

    async def run(self, operation):
        """`operation(client)`, with Redis being away turned into StoreUnavailable, said once."""
        now = time.monotonic()
        if self._down_since is not None and now < self._next_try:
            raise StoreUnavailable(f"Redis ({_redacted(self.url)}) is unreachable")
        task = asyncio.current_task()
        cancelling = task.cancelling() if task is not None else 0
        try:
            result = await operation(self._connect())
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError,
                asyncio.TimeoutError) as exc:
            _still_cancelled(task, cancelling)
            if self._down_since is None:
                self._down_since = now
                self._backoff = BACKOFF_FIRST
                self.counters["outages"] += 1
                log.error("Redis (%s) is unreachable (%s): serving the last snapshot, "
                          "trying again with backoff", _redacted(self.url), exc)
            else:
                self._backoff = min(self._backoff * 2, BACKOFF_MAX)
            self._next_try = now + self._backoff
            raise StoreUnavailable(f"Redis ({_redacted(self.url)}) is unreachable: {exc}") from None
        except redis.exceptions.RedisError as exc:
            _still_cancelled(task, cancelling)
            raise StoreError(f"Redis ({_redacted(self.url)}): {exc}") from None
        _still_cancelled(task, cancelling)
        if self._down_since is not None:
            log.warning("Redis (%s) is back after %.1f s: resynchronising", _redacted(self.url),
                        now - self._down_since)
            self._down_since = None
            self.counters["reconnects"] += 1
            if self.changed is not None:
                self.changed.set()
        return result

    @property
    def available(self) -> bool:
        return self._down_since is None

    async def version(self) -> int:
        version, marker = await self.run(lambda r: r.mget(self.key("version"), self.key("marker")))
        version = int(version or 0)
        marker = marker.decode() if marker is not None else None
        if self._marker is None:
            self._marker = marker
        elif marker != self._marker or version < self._seen_version:
            version = await self._lost(version, marker)
        self._seen_version = max(self._seen_version, version)
        return version

    def _holds_state(self) -> bool:
        return self._seen_version > 0 and bool(
            self._policy is not None or self._overrides or self._users or self._tokens)

    async def _lost(self, version: int, marker: str | None) -> int:
        """Redis came back without our store (restarted without persistence, a failover to a
        replica that lagged, or another instance seeded it meanwhile): keep serving; write our
        state back when our version is the highest, else adopt the stored one. Said once and
        counted once per event: afterwards the store's marker is ours or the one we adopted."""
        self.counters["lost_store"] += 1
        what = "missing" if marker is None else \
            ("changed" if marker != self._marker else "kept, version went backwards")
        if self._holds_state():
            result = await self._write_back(
                before=f"store lost (marker {what}, version {version})",
                after=f"version {self._seen_version} written back")
            if result[0]:
                self.counters["restored"] += 1
                log.error("the Redis store was lost (marker %s, version %d); this instance holds "
                          "the highest version (%d): rebuilt from this instance's snapshot "
                          "(Redis needs persistence: appendonly yes)",
                          what, version, self._seen_version)
                return self._seen_version
            version, marker = int(result[1]), result[2].decode()
        if marker is None:  # nothing to write back and nothing stored: wait for a writer
            log.error("the Redis store was lost (marker missing, version %d) and this instance "
                      "holds nothing to write back (Redis needs persistence: appendonly yes)",
                      version)
            self._marker, self._seen_version = None, 0
            self.generation += 1
            return version
        log.error("the Redis store was lost (marker %s); the store now holds version %d, not "
                  "below this instance's %d: adopting it (Redis needs persistence: "
                  "appendonly yes)", what, version, self._seen_version)
        self._marker, self._seen_version = marker, version
        self.generation += 1
        return version

    async def _write_back(self, *, before: str, after: str) -> list:
        """The _RESTORE script with this instance's state: [1] when written, else [0, the stored
        version, the stored marker]."""
        policy = self._policy
        entry = json.dumps(asdict(AuditEntry(
            at=time.time(), actor=f"classguard instance {self.instance}", action="store.restore",
            before=before, after=after)))
        now = time.time()
        overrides = [{"id": item.id, "until": item.until, "json": json.dumps(asdict(item))}
                     for item in self._overrides if item.until > now]
        users = [{"name": name, "json": json.dumps(asdict(user))}
                 for name, user in sorted(self._users.items())]
        tokens = [{"name": sha256, "json": json.dumps(asdict(token))}
                  for sha256, token in sorted(self._tokens.items())]
        marker = self._marker or secrets.token_hex(8)
        result = await self.run(lambda r: r.eval(
            _RESTORE, 8, self.key("version"), self.key("policy"), self.key("overrides"),
            self.key("marker"), self.key("audit"), self.key("changes"), self.key("users"),
            self.key("tokens"),
            marker, self._seen_version,
            "" if policy is None else policy.text, 0 if policy is None else policy.version,
            0 if policy is None else repr(policy.updated_at), "" if policy is None else policy.updated_by,
            json.dumps(overrides), entry, self.instance, json.dumps(users),
            json.dumps(tokens), self.prefix))
        if result[0]:
            self._marker = marker
        return result

    # -- this instance's copy of the store under state_dir, for a start on a lost store

    async def remember(self) -> None:
        """Read the accounts (users, tokens) into memory, and save what this instance holds
        (marker, version, policy, overrides, accounts) under state_dir when it changed. The
        server's watcher calls this after each change it applied; never the DNS path."""
        users, tokens = await self.users(), await self.tokens()
        marker = await self.run(lambda r: r.get(self.key("marker")))
        if marker is None or marker.decode() != self._marker:
            return  # lost meanwhile: keep what we hold for the rebuild the next look makes
        self._users = {user.name: user for user in users}
        self._tokens = {token.sha256: token for token in tokens}
        if self.snapshot_path is None or self._marker is None:
            return
        text = json.dumps({
            "format": SNAPSHOT_FORMAT, "marker": self._marker, "version": self._seen_version,
            "policy": None if self._policy is None else asdict(self._policy),
            "overrides": [asdict(item) for item in self._overrides],
            "users": [asdict(user) for _, user in sorted(self._users.items())],
            "tokens": [asdict(token) for _, token in sorted(self._tokens.items())],
        }, ensure_ascii=False, indent=1) + "\n"
        if text == self._snapshot_written:
            return
        path = self.snapshot_path
        try:
            await asyncio.to_thread(_save_snapshot, path, text)
        except OSError as exc:
            log.warning("cannot save this instance's copy of the store in %s: %s", path, exc)
            return
        self._snapshot_written = text

    async def restore_saved(self) -> bool:
        """At startup, when Redis holds no policy: write back the state this instance saved
        under state_dir (SPEC §7: a lost store is never re-seeded from the policy file) when
        its version is the highest. True when written; False when there is no saved state or
        the store holds as much (the caller then uses what the store holds)."""
        if self.snapshot_path is None:
            return False
        try:
            text = await asyncio.to_thread(self.snapshot_path.read_text)
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("cannot read this instance's copy of the store in %s: %s",
                        self.snapshot_path, exc)
            return False
        try:
            data = json.loads(text)
            if data.get("format") != SNAPSHOT_FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            marker, version = str(data["marker"]), int(data["version"])
            policy = None if data["policy"] is None else StoredPolicy(**data["policy"])
            overrides = [Override(**item) for item in data["overrides"]]
            users = {item["name"]: _user(json.dumps(item)) for item in data["users"]}
            tokens = {item["sha256"]: ApiToken(**item) for item in data["tokens"]}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("%s is unreadable (%s): not used", self.snapshot_path, exc)
            return False
        self._marker, self._seen_version = marker, version
        self._policy, self._overrides, self._users, self._tokens = policy, overrides, users, tokens
        result = await self._write_back(before="store empty at startup",
                                        after=f"version {version} written back from "
                                              f"{self.snapshot_path}")
        if result[0]:
            self.counters["lost_store"] += 1
            self.counters["restored"] += 1
            log.error("the Redis store was lost (it holds no policy): rebuilt from this "
                      "instance's copy in %s (version %d), not seeded from the policy file "
                      "(Redis needs persistence: appendonly yes)", self.snapshot_path, version)
            return True
        # the store holds as much already (another instance wrote first): start from it
        self._marker, self._seen_version = None, 0
        self._policy, self._overrides, self._users, self._tokens = None, [], {}, {}
        return False

    def _markers(self) -> tuple[str, str]:
        """(the marker a write must find, or '' when this client has seen none; a new one)."""
        return self._marker or "", self._marker or secrets.token_hex(8)

    # -- the Store interface

    async def get_policy(self) -> StoredPolicy | None:
        fields = await self.run(lambda r: r.hgetall(self.key("policy")))
        if not fields:
            policy = None
        else:
            policy = StoredPolicy(text=fields[b"text"].decode(), version=int(fields[b"version"]),
                                  updated_at=float(fields[b"updated_at"]),
                                  updated_by=fields[b"updated_by"].decode())
        if policy is not None or self._policy is None:
            self._policy = policy
        return policy

    async def put_policy(self, text: str, *, actor: str, expected_version: int | None = None,
                         action: str = "policy.import", before: str = "",
                         after: str = "") -> StoredPolicy:
        known, new = self._markers()
        now = time.time()
        result = await self.run(lambda r: r.eval(
            _PUT_POLICY, 5, self.key("version"), self.key("policy"), self.key("audit"),
            self.key("marker"), self.key("changes"),
            text, actor, "" if expected_version is None else expected_version, repr(now), action,
            before, after, AUDIT_KEPT, known, new, self.instance))
        status, current = result[0].decode(), int(result[1])
        if status == "lost":
            raise StoreError("the Redis store was lost and is being rebuilt; try again in a second")
        if status == "conflict":
            raise VersionConflict(expected_version, current)
        if status == "same":
            return await self.get_policy()
        if self._marker is None:
            self._marker = result[3].decode()  # the store's, which may predate this write
        stored = StoredPolicy(text=text, version=current, updated_at=now, updated_by=actor)
        return stored

    async def overrides(self) -> list[Override]:
        fields = await self.run(lambda r: r.hgetall(self.key("overrides")))
        now = time.time()
        items = sorted((Override(**json.loads(value)) for value in fields.values()),
                       key=lambda item: (item.created_at, item.id))
        self._overrides = items
        return [item for item in items if item.until > now]

    async def _override_op(self, op: str, override_id: str, payload: str, entry: str) -> list:
        known, new = self._markers()
        result = await self.run(lambda r: r.eval(
            _OVERRIDE, 5, self.key("version"), self.key("overrides"), self.key("audit"),
            self.key("marker"), self.key("changes"),
            op, override_id, payload, repr(time.time()), entry, AUDIT_KEPT, known, new,
            self.instance))
        status = result[0].decode()
        if status == "lost":
            raise StoreError("the Redis store was lost and is being rebuilt; try again in a second")
        if self._marker is None and status == "ok":
            self._marker = result[3].decode()
        return [status, *result[1:]]

    async def add_override(self, override: Override, *, actor: str) -> Override:
        entry = json.dumps(asdict(AuditEntry(at=time.time(), actor=actor, action="override.add",
                                             before="", after=describe_override(override))))
        status, *_ = await self._override_op("add", override.id, json.dumps(asdict(override)), entry)
        if status == "exists":
            raise StoreError(f"an override with id {override.id} exists already")
        return override

    async def cancel_override(self, override_id: str, *, actor: str) -> Override:
        current = {item.id: item for item in await self.overrides()}
        found = current.get(override_id)
        if found is None:
            raise NotFound(f"no override {override_id!r} in force (see classguard override list)")
        entry = json.dumps(asdict(AuditEntry(at=time.time(), actor=actor, action="override.cancel",
                                             before=describe_override(found), after="cancelled")))
        status, *_ = await self._override_op("cancel", override_id, "", entry)
        if status == "missing":
            raise NotFound(f"no override {override_id!r} in force (see classguard override list)")
        return found

    async def audit(self, limit: int = 100) -> list[AuditEntry]:
        lines = await self.run(lambda r: r.lrange(self.key("audit"), 0, limit - 1))
        entries = []
        for line in lines:
            try:
                entries.append(AuditEntry(**json.loads(line)))
            except (ValueError, TypeError):
                continue
        return entries

    async def merge_active_minutes(self, day: str, minutes: dict[str, bytes]) -> dict[str, bytes]:
        """BITOP OR into `minutes:DAY:DEVICE`; while Redis is away the bits wait in a bounded
        buffer (what does not fit is dropped and counted) and the caller gets what it gave."""
        waiting = self._minutes_buffer.pop(day, {})
        for device, bits in minutes.items():
            waiting[device] = _or(waiting.get(device, b""), bits)
        for old_day in [d for d in self._minutes_buffer if d < day]:
            del self._minutes_buffer[old_day]  # a past day's minutes no longer count
        try:
            return await self.run(lambda r: self._merge(r, day, waiting))
        except StoreUnavailable:
            held = sum(len(devices) for devices in self._minutes_buffer.values())
            kept: dict[str, bytes] = {}
            for device, bits in waiting.items():
                if held < MINUTES_BUFFER_MAX:
                    kept[device] = bits
                    held += 1
                else:
                    self.counters["minutes_dropped"] += 1
            self._minutes_buffer[day] = kept
            return dict(minutes)

    async def _merge(self, r: aioredis.Redis, day: str, minutes: dict[str, bytes]) -> dict[str, bytes]:
        index = self.key(f"minutes:{day}")
        scratch = self.key(f"minutes:scratch:{self.instance}")
        async with r.pipeline(transaction=True) as pipe:
            for device, bits in minutes.items():
                target = self.key(f"minutes:{day}:{device}")
                pipe.set(scratch, bits)
                pipe.bitop("OR", target, target, scratch)
                pipe.expire(target, MINUTES_TTL)
                pipe.sadd(index, device)
            pipe.delete(scratch)
            pipe.expire(index, MINUTES_TTL)
            pipe.smembers(index)
            results = await pipe.execute()
        devices = sorted(item.decode() for item in results[-1])
        if not devices:
            return {}
        values = await r.mget([self.key(f"minutes:{day}:{device}") for device in devices])
        return {device: value for device, value in zip(devices, values) if value is not None}

    # -- change notifications (a nudge: the watcher's poll is what guarantees a change arrives)

    def subscribe(self) -> asyncio.Event:
        """An event set when another instance writes; the subscription reconnects with backoff
        and ignores this instance's own writes."""
        if self.changed is None or self._subscriber is None or self._subscriber.done():
            self.changed = asyncio.Event()
            self._subscriber = asyncio.create_task(self._listen())
        return self.changed

    async def _listen(self) -> None:
        delay = BACKOFF_FIRST
        while True:
            pubsub = None
            try:
                pubsub = self._connect().pubsub()
                await pubsub.subscribe(self.key("changes"))
                delay = BACKOFF_FIRST
                self.changed.set()  # anything missed while away is read at once
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    if message is None or message.get("type") != "message":
                        continue
                    sender = message["data"].decode(errors="replace").partition(" ")[0]
                    if sender != self.instance:
                        self.changed.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away, or a reply we did not expect
                log.debug("change channel: %s; subscribing again in %.2f s", exc, delay)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    # -- compiled lists, chunked (SPEC §7: keys of at most 1 MB, a manifest with a checksum)

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

    # -- health, for /readyz (classguard.metrics.ReadinessProbe)

    async def health(self) -> str | None:
        """None while Redis answers; else that it is away and for how long: the server answers
        from its snapshot meanwhile, which /readyz reports as a note, not as a reason."""
        try:
            await self.run(lambda r: r.ping())
        except StoreUnavailable:
            away = time.monotonic() - self._down_since if self._down_since is not None else 0.0
            return (f"Redis ({_redacted(self.url)}) unreachable for {away:.0f} s; answering from "
                    "this instance's snapshot")
        return None

    # -- a device's data as this store holds it (GDPR art. 15 and 17; privacy.gdpr adds the
    # query log's part, kept under this store's keys too)

    async def device_data(self, device_id: str) -> dict:
        """The device's policy record (no token) and its screen-time minutes per day."""
        policy = await self.get_policy()
        minutes = await self._device_minutes(device_id)
        return {
            "device_record": device_record(None if policy is None else policy.text, device_id),
            "screen_time_minutes": {day: minutes_of(bits) for day, bits in sorted(minutes.items())},
        }

    async def erase_device(self, device_id: str, *, actor: str = "device.erase") -> dict:
        """Delete the device's screen-time keys and its record in the policy (audited)."""
        erased: dict = {"device_record": False, "screen_time_days": 0}
        days = await self._device_minutes(device_id)

        async def erase_minutes(r) -> None:
            # every day's index of devices too, even one whose bitmap key has already expired
            indexes = {key async for key in r.scan_iter(match=self.key("minutes:????-??-??"),
                                                         count=1000)}
            async with r.pipeline(transaction=True) as pipe:
                for day in days:
                    pipe.delete(self.key(f"minutes:{day}:{device_id}"))
                for index in indexes:
                    pipe.srem(index, device_id)
                await pipe.execute()

        await self.run(erase_minutes)
        erased["screen_time_days"] = len(days)
        for _ in range(ERASE_RETRIES):
            policy = await self.get_policy()
            text = None if policy is None else policy_without(policy.text, device_id)
            if text is None:
                return erased
            try:
                await self.put_policy(text, actor=actor, expected_version=policy.version,
                                      action="device.erase", before=f"device {device_id}",
                                      after="erased")
            except VersionConflict:
                await asyncio.sleep(0.05)
                continue
            erased["device_record"] = True
            return erased
        raise StoreError("the policy kept changing while the device's record was removed; "
                         "run device erase again")

    async def _device_minutes(self, device_id: str) -> dict[str, bytes]:
        """The device's screen-time bitmaps (keys minutes:DAY:DEVICE) by day."""
        # SCAN pattern: glob characters of the id escaped
        pattern = self.key("minutes:") + "????-??-??:" + "".join(
            f"\\{char}" if char in "*?[]\\" else char for char in device_id)

        async def read(r) -> dict[str, bytes]:
            keys = sorted({key async for key in r.scan_iter(match=pattern, count=1000)})
            values = await r.mget(keys) if keys else []
            prefix = len(self.key("minutes:"))
            return {key.decode()[prefix:prefix + 10]: value
                    for key, value in zip(keys, values) if value is not None}

        return await self.run(read)

    # -- dashboard accounts: users, API tokens, sessions (SPEC §7: every instance accepts the
    # same login and the same token). One record a key: `user:NAME` and `token:SHA256` (JSON)
    # with the sets `users` and `tokens` naming them, `session:SHA256` expiring with the session.
    # Writing a user or a token moves `version`: every instance's watcher then reads them again
    # (remember()) and a rebuild of a lost store writes them back. Sessions are not kept: a
    # Redis that comes back empty has lost them and users log in again (docs/scaling.md).

    async def get_user(self, name: str) -> User | None:
        raw = await self.run(lambda r: r.get(self.key(f"user:{name}")))
        return None if raw is None else _user(raw)

    async def users(self) -> list[User]:
        return [_user(raw) for raw in await self._records("users", "user")]

    async def put_user(self, user: User, *, actor: str, action: str, before: str = "") -> User:
        await self._put_record("users", "user", user.name, json.dumps(asdict(user)),
                               actor=actor, action=action, before=before,
                               after=describe_user(user))
        self._users[user.name] = user
        return user

    async def delete_user(self, name: str, *, actor: str) -> None:
        """The record and its name in the index go with the audit entry in one script
        (_REMOVE_RECORD), which moves `version` like any account write; every instance's next
        request with one of the account's sessions finds no account."""
        key = self.key(f"user:{name}")
        while True:
            raw = await self.run(lambda r: r.get(key))
            if raw is None:
                self._users.pop(name, None)
                return
            entry = AuditEntry(at=time.time(), actor=actor, action="user.remove",
                               before=describe_user(_user(raw)), after="")
            known, _new = self._markers()
            result = await self.run(lambda r: r.eval(
                _REMOVE_RECORD, 6, self.key("marker"), key, self.key("users"), self.key("audit"),
                self.key("version"), self.key("changes"), known, raw, name,
                json.dumps(asdict(entry)), AUDIT_KEPT, self.instance))
            outcome = result[0].decode()
            if outcome == "lost":
                raise StoreError("the Redis store was lost and is being rebuilt; try again in a second")
            if outcome == "ok":
                self._users.pop(name, None)
                return
            # "changed": written meanwhile; read it again for the audit's "before"

    # -- failed logins (dashboard.auth.StoreThrottle): one counter a (account, address) pair,
    # shared by every instance, expiring on its own

    async def count_failure(self, name: str, window_ms: Callable[[int], int]) -> int:
        """Add one to the counter `name` and set its time to live to `window_ms(new count)`, in
        one call (a script: INCR and PEXPIRE together, so no instance sees one without the
        other). The script gets the windows of the counts 1 to FAILURE_WINDOWS, computed here."""
        key = self.key(f"failures:{name}")
        windows = [max(1, int(window_ms(count))) for count in range(1, FAILURE_WINDOWS + 1)]
        return int(await self.run(lambda r: r.eval(_COUNT_FAILURE, 1, key, *windows)))

    async def failures(self, name: str) -> tuple[int, int]:
        """(count, milliseconds it has left to live); (0, 0) when there is none."""
        key = self.key(f"failures:{name}")

        async def read(r: aioredis.Redis) -> tuple[int, int]:
            async with r.pipeline(transaction=False) as pipe:
                pipe.get(key)
                pipe.pttl(key)
                raw, ttl = await pipe.execute()
            return (0, 0) if raw is None or ttl < 0 else (int(raw), int(ttl))
        return await self.run(read)

    async def forget_failures(self, name: str) -> None:
        await self.run(lambda r: r.delete(self.key(f"failures:{name}")))

    async def get_token(self, sha256: str) -> ApiToken | None:
        raw = await self.run(lambda r: r.get(self.key(f"token:{sha256}")))
        return None if raw is None else ApiToken(**json.loads(raw))

    async def tokens(self) -> list[ApiToken]:
        return [ApiToken(**json.loads(raw)) for raw in await self._records("tokens", "token")]

    async def put_token(self, token: ApiToken, *, actor: str, action: str) -> ApiToken:
        await self._put_record("tokens", "token", token.sha256, json.dumps(asdict(token)),
                               actor=actor, action=action, after=describe_token(token))
        self._tokens[token.sha256] = token
        return token

    async def get_session(self, sha256: str) -> Session | None:
        raw = await self.run(lambda r: r.get(self.key(f"session:{sha256}")))
        if raw is None:
            return None
        session = Session(**json.loads(raw))
        return session if session.expires > time.time() else None

    async def put_session(self, session: Session) -> None:
        key, value = self.key(f"session:{session.sha256}"), json.dumps(asdict(session))
        await self.run(lambda r: r.set(key, value, pxat=math.ceil(session.expires * 1000)))

    async def delete_session(self, sha256: str) -> None:
        await self.run(lambda r: r.delete(self.key(f"session:{sha256}")))

    async def _records(self, index: str, kind: str) -> list[bytes]:
        async def read(r: aioredis.Redis) -> list[bytes]:
            names = sorted(item.decode() for item in await r.smembers(self.key(index)))
            if not names:
                return []
            return [raw for raw in await r.mget([self.key(f"{kind}:{name}") for name in names])
                    if raw is not None]
        return await self.run(read)

    async def _put_record(self, index: str, kind: str, name: str, value: str, *, actor: str,
                          action: str, after: str, before: str = "") -> None:
        """The record, its name in the index and the audit entry, in one script (_RECORD)."""
        entry = AuditEntry(at=time.time(), actor=actor, action=action, before=before, after=after)
        known, new = self._markers()
        result = await self.run(lambda r: r.eval(
            _RECORD, 6, self.key("marker"), self.key(f"{kind}:{name}"), self.key(index),
            self.key("audit"), self.key("version"), self.key("changes"),
            known, new, value, name, json.dumps(asdict(entry)), AUDIT_KEPT, self.instance))
        if result[0].decode() == "lost":
            raise StoreError("the Redis store was lost and is being rebuilt; try again in a second")
        if self._marker is None:
            self._marker = result[2].decode()

    async def close(self) -> None:
        """Stop the subscription and close the connections (the store can be used again)."""
        if self._subscriber is not None:
            self._subscriber.cancel()
            await asyncio.gather(self._subscriber, return_exceptions=True)
            self._subscriber = None
        if self._client is not None:
            client, self._client, self._loop = self._client, None, None
            with contextlib.suppress(Exception):
                await client.aclose()


def _save_snapshot(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, text)


def _user(raw: bytes | str) -> User:
    return User.from_record(json.loads(raw))


# INCR and PEXPIRE in one call. ARGV[n] is the time to live after the n-th failure; past the
# last one given, the last one holds (the delays stop growing at their cap).
FAILURE_WINDOWS = 16
_COUNT_FAILURE = """
local count = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[math.min(count, #ARGV)])
return count
"""


def _still_cancelled(task: asyncio.Task | None, cancelling: int) -> None:
    """Raise CancelledError when the task was cancelled during a Redis call that returned (or
    failed) all the same: redis-py can swallow a cancellation that arrives while a connection is
    being made again after Redis restarted, and the server's stop then waited forever on the
    store watcher it had cancelled."""
    if task is not None and task.cancelling() > cancelling:
        raise asyncio.CancelledError()


def _or(a: bytes, b: bytes) -> bytes:
    size = max(len(a), len(b))
    return (int.from_bytes(a, "little") | int.from_bytes(b, "little")).to_bytes(size, "little")


def _file_sha256(path: Path) -> str | None:
    try:
        with open(path, "rb") as file:
            return hashlib.file_digest(file, "sha256").hexdigest()
    except FileNotFoundError:
        return None


def artifact_sha256(path: Path) -> str | None:
    return _file_sha256(path)

