"""`redis://HOST:PORT/DB`: one Redis shared by a fleet of servers (the `redis` client library).

Layout (schema 3, as the SQLite store's; a schema-2 session reads with tenant ""), under the prefix `streamer:`:
- `streamer:meta`: a hash holding `schema_version`;
- `streamer:s:NAME`: a hash per session, its snapshot as a few blobs (mode, options, version, seq, the series
  names and their lengths, `a:KEY` and `t:KEY` for each array and its dtype, the kept answers, last_used, tenant);
- `streamer:l:NAME`: a hash per lease (owner, expires in wall-clock seconds), with a key expiry a little past
  it so a dead owner's lease also leaves Redis by itself;
- `streamer:idle`: a sorted set of session names by last use, which `expire` reads, and each idle session
  key also expires by itself `ttl` seconds after its release (when the store knows the TTL).
Every change is one Lua script, so the compare-and-set on the lease owner and the write it guards are atomic
(Redis runs a script to the end before any other command).
"""
from __future__ import annotations

import numpy as np

from streamer.store.base import SCHEMA_VERSION, Snapshot, Store, StoredSession, StoreError

PREFIX = "streamer:"
_META, _IDLE = PREFIX + "meta", PREFIX + "idle"
_GRACE_MS = 60_000  # a lease key outlives its expiry by this much (expiry itself is checked on `expires`)

# KEYS[1] lease; ARGV owner, now, seconds. Returns -1 when taken, else the holder's expiry (as a string).
_ACQUIRE = """
local owner = redis.call('HGET', KEYS[1], 'owner')
local expires = tonumber(redis.call('HGET', KEYS[1], 'expires') or '0')
if owner and owner ~= ARGV[1] and expires > tonumber(ARGV[2]) then
  return tostring(expires)
end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'expires', tostring(tonumber(ARGV[2]) + tonumber(ARGV[3])))
redis.call('PEXPIRE', KEYS[1], math.floor(tonumber(ARGV[3]) * 1000) + %d)
return -1
""" % _GRACE_MS

# KEYS[1] lease; ARGV owner, now, seconds. 1 if renewed.
_RENEW = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'expires', tostring(tonumber(ARGV[2]) + tonumber(ARGV[3])))
redis.call('PEXPIRE', KEYS[1], math.floor(tonumber(ARGV[3]) * 1000) + %d)
return 1
""" % _GRACE_MS

# KEYS lease, session, idle; ARGV owner, now, name, ttl_ms (0: none). 1 if released.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HSET', KEYS[2], 'last_used', ARGV[2])
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
  if tonumber(ARGV[4]) > 0 then redis.call('PEXPIRE', KEYS[2], ARGV[4]) end
end
return 1
"""

# KEYS lease, session, idle; ARGV owner, name, last_used, then field/value pairs. 1 if written.
_SAVE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], unpack(ARGV, 4))
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
return 1
"""

# KEYS idle; ARGV idle_before, now, prefix. The names dropped.
_EXPIRE = """
local gone = {}
for _, name in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])) do
  local lease = ARGV[3] .. 'l:' .. name
  local expires = tonumber(redis.call('HGET', lease, 'expires') or '0')
  if expires <= tonumber(ARGV[2]) then
    redis.call('DEL', ARGV[3] .. 's:' .. name, lease)
    redis.call('ZREM', KEYS[1], name)
    table.insert(gone, name)
  end
end
return gone
"""


# KEYS lease, session, idle; ARGV owner, name. 1 if deleted.
_DELETE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[2])
return 1
"""


class RedisStore(Store):
    """The store interface over one Redis database; thread-safe (redis-py's connection pool)."""

    def __init__(self, url: str, session_ttl: float | None = None, timeout: float = 5.0):
        import redis  # only a server on a Redis store needs the library loaded

        self.url = url
        self._ttl_ms = int(session_ttl * 1000) if session_ttl else 0
        self._redis_errors = (redis.RedisError, OSError)
        try:
            self._r = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
            self._r.ping()
            found = self._r.hget(_META, "schema_version")
            if found is None:
                if self._r.scan(match=PREFIX + "*", count=1000)[1]:
                    raise StoreError(f"{url}: keys under {PREFIX!r} but no {_META}: not a streamer store")
                self._r.hsetnx(_META, "schema_version", str(SCHEMA_VERSION))
            elif int(found) > SCHEMA_VERSION:
                raise StoreError(f"{url}: written by a newer streamer (store schema {int(found)}; this one "
                                 f"reads up to {SCHEMA_VERSION}); upgrade streamer or use another database")
            elif int(found) < SCHEMA_VERSION:
                # Schema 1 was never written to Redis (its store began at 2); 2 -> 3 added a session's tenant, a
                # hash field that reads as "" (the one tenant) where absent: only the number moves, so that a
                # streamer of schema 2 refuses a store that may now hold tenants.
                self._r.hset(_META, "schema_version", str(SCHEMA_VERSION))
            self._acquire, self._renew = self._r.register_script(_ACQUIRE), self._r.register_script(_RENEW)
            self._release, self._save = self._r.register_script(_RELEASE), self._r.register_script(_SAVE)
            self._expire, self._delete = self._r.register_script(_EXPIRE), self._r.register_script(_DELETE)
        except StoreError:
            raise
        except (ValueError, *self._redis_errors) as exc:
            raise StoreError(f"{url}: cannot use it as a store: {exc}") from None

    @staticmethod
    def _keys(name: str) -> tuple[str, str]:
        return PREFIX + "l:" + name, PREFIX + "s:" + name

    def acquire(self, name: str, owner: str, seconds: float, now: float) -> float | None:
        lease, _ = self._keys(name)
        held = self._acquire(keys=[lease], args=[owner, repr(now), repr(seconds)])
        return None if held == -1 else float(held)

    def renew(self, name: str, owner: str, seconds: float, now: float) -> bool:
        lease, _ = self._keys(name)
        return self._renew(keys=[lease], args=[owner, repr(now), repr(seconds)]) == 1

    def release(self, name: str, owner: str, now: float) -> bool:
        lease, session = self._keys(name)
        return self._release(keys=[lease, session, _IDLE], args=[owner, repr(now), name, self._ttl_ms]) == 1

    def version(self, name: str) -> int | None:
        v = self._r.hget(self._keys(name)[1], "version")
        return None if v is None else int(v)

    def load(self, name: str) -> Snapshot | None:
        h = self._r.hgetall(self._keys(name)[1])  # one command: the fields agree
        if not h:
            return None
        try:
            series = int(h[b"series"])
            lengths = np.frombuffer(h[b"name_lengths"], dtype="<i8").astype(np.int64)
            arrays = {k[2:].decode(): np.frombuffer(v, dtype=h[b"t:" + k[2:]].decode()).copy()
                      for k, v in h.items() if k.startswith(b"a:")}
            snap = Snapshot(name, int(h[b"mode"]), h[b"options"].decode(), int(h[b"version"]), h[b"names"], lengths,
                            arrays, float(h[b"last_used"]), int(h[b"seq"]), h[b"answers"],
                            h.get(b"tenant", b"").decode())
        except (KeyError, ValueError, TypeError) as exc:
            raise StoreError(f"{self.url}: session {name!r} is damaged ({exc!r})") from None
        if len(lengths) != series or int(lengths.sum()) != len(snap.names) or \
                any(len(a) != series for a in arrays.values()):
            raise StoreError(f"{self.url}: session {name!r} is damaged ({series} series, {len(lengths)} name "
                             f"lengths, arrays {[len(a) for a in arrays.values()]})")
        return snap

    def save(self, snapshot: Snapshot, owner: str) -> bool:
        s = snapshot
        lease, session = self._keys(s.name)
        fields = ["mode", s.mode, "options", s.options, "version", s.version, "series", len(s), "names", s.names,
                  "name_lengths", s.name_lengths.astype("<i8").tobytes(), "last_used", repr(s.last_used),
                  "seq", s.seq, "answers", s.answers, "tenant", s.tenant]
        for key, a in s.arrays.items():
            fields += ["a:" + key, a.tobytes(), "t:" + key, a.dtype.str]
        return self._save(keys=[lease, session, _IDLE], args=[owner, s.name, repr(s.last_used), *fields]) == 1

    def expire(self, idle_before: float, now: float) -> list[str]:
        gone = self._expire(keys=[_IDLE], args=[repr(idle_before), repr(now), PREFIX])
        return [g.decode() for g in gone]

    def tenant(self, name: str) -> str | None:
        session = self._keys(name)[1]
        tenant, version = self._r.hmget(session, "tenant", "version")
        return None if version is None else (tenant or b"").decode()

    def sessions(self, now: float) -> list[StoredSession]:
        names = set()
        for kind in ("s:", "l:"):
            names |= {k.decode()[len(PREFIX) + 2:] for k in self._r.scan_iter(match=PREFIX + kind + "*", count=1000)}
        out = []
        for name in sorted(names):
            lease, session = self._keys(name)
            tenant, mode, series, version, last_used = self._r.hmget(session, "tenant", "mode", "series", "version",
                                                                     "last_used")
            owner, expires = self._r.hmget(lease, "owner", "expires")
            live = owner is not None and float(expires or 0) > now
            if version is None and not live:
                continue
            out.append(StoredSession(name, (tenant or b"").decode(), int(mode or 0), int(series or 0),
                                     int(version or 0), float(last_used or 0), owner.decode() if live else "",
                                     float(expires) if live else 0.0))
        return out

    def delete(self, name: str, owner: str) -> bool:
        lease, session = self._keys(name)
        return self._delete(keys=[lease, session, _IDLE], args=[owner, name]) == 1

    def close(self) -> None:
        self._r.close()
