"""Cluster-wide slot leases in Redis.

Per slot: a sorted set ``smartcron:lease:<slot>`` (member = run id, score = expiry as
epoch seconds) and two hashes with each holder's expected memory (MB) and CPU claim
(percent).  Taking a lease is one Lua script, so two dispatchers on two hosts can never
both take the last place.  Expired members are dropped on every call: a crashed worker
never leaves a slot "full", and nobody resets a counter by hand.
"""

from __future__ import annotations

import dataclasses
import time

from slots.redis_client import get_redis

PREFIX = "smartcron:lease:"

# KEYS: zset, mem hash, cpu hash
# ARGV: now, ttl, run_id, max_jobs, mem_mb, mem_budget, cpu, cpu_budget
# Returns {ok, reason, holders, mem_in_use, cpu_in_use}
_ACQUIRE = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, m in ipairs(expired) do
  redis.call('ZREM', KEYS[1], m); redis.call('HDEL', KEYS[2], m); redis.call('HDEL', KEYS[3], m)
end
local now = tonumber(ARGV[1])
local expiry = now + tonumber(ARGV[2])
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  redis.call('ZADD', KEYS[1], expiry, ARGV[3])
  return {1, 'held', redis.call('ZCARD', KEYS[1]), '0', '0'}
end
local count = redis.call('ZCARD', KEYS[1])
local mem = 0
for _, v in ipairs(redis.call('HVALS', KEYS[2])) do mem = mem + tonumber(v) end
local cpu = 0
for _, v in ipairs(redis.call('HVALS', KEYS[3])) do cpu = cpu + tonumber(v) end
if count >= tonumber(ARGV[4]) then
  return {0, 'jobs', count, tostring(mem), tostring(cpu)}
end
-- An empty slot admits any single job, however large: otherwise it could never run.
if count > 0 and mem + tonumber(ARGV[5]) > tonumber(ARGV[6]) then
  return {0, 'memory', count, tostring(mem), tostring(cpu)}
end
if count > 0 and cpu + tonumber(ARGV[7]) > tonumber(ARGV[8]) then
  return {0, 'cpu', count, tostring(mem), tostring(cpu)}
end
redis.call('ZADD', KEYS[1], expiry, ARGV[3])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[5])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[7])
return {1, 'ok', count + 1, tostring(mem + tonumber(ARGV[5])), tostring(cpu + tonumber(ARGV[7]))}
"""

# Renew only a lease still held (XX): a holder whose lease was reclaimed must stop.
_RENEW = """
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[2])
  return 1
end
return 0
"""

_REAP = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, m in ipairs(expired) do
  redis.call('ZREM', KEYS[1], m); redis.call('HDEL', KEYS[2], m); redis.call('HDEL', KEYS[3], m)
end
return expired
"""


def _keys(slot: str) -> list[str]:
    return [f"{PREFIX}{slot}", f"{PREFIX}{slot}:mem", f"{PREFIX}{slot}:cpu"]


@dataclasses.dataclass
class LeaseAttempt:
    granted: bool
    reason: str  # ok | held | jobs | memory | cpu
    holders: int
    memory_in_use_mb: float
    cpu_in_use: float


@dataclasses.dataclass
class SlotUsage:
    slot: str
    holders: list[int]
    memory_in_use_mb: float
    cpu_in_use: float


class LeaseStore:
    def __init__(self, client=None) -> None:
        self.r = client or get_redis()
        self._acquire = self.r.register_script(_ACQUIRE)
        self._renew = self.r.register_script(_RENEW)
        self._reap = self.r.register_script(_REAP)

    def acquire(self, slot: str, run_id: int, *, ttl: float, max_jobs: int, memory_mb: float,
                memory_budget_mb: float, cpu: float = 0.0, cpu_budget: float = 1e9) -> LeaseAttempt:
        res = self._acquire(keys=_keys(slot), args=[
            time.time(), ttl, run_id, max_jobs, round(memory_mb, 3), memory_budget_mb, round(cpu, 3), cpu_budget])
        return LeaseAttempt(bool(res[0]), res[1].decode() if isinstance(res[1], bytes) else res[1],
                            int(res[2]), float(res[3]), float(res[4]))

    def renew(self, slot: str, run_id: int, *, ttl: float) -> bool:
        return bool(self._renew(keys=_keys(slot)[:1], args=[time.time() + ttl, run_id]))

    def release(self, slot: str, run_id: int) -> None:
        zset, mem, cpu = _keys(slot)
        pipe = self.r.pipeline()
        pipe.zrem(zset, run_id)
        pipe.hdel(mem, run_id)
        pipe.hdel(cpu, run_id)
        pipe.execute()

    def reap(self, slot: str) -> list[int]:
        """Drop expired leases; return the run ids whose holder stopped heartbeating."""
        return [int(m) for m in self._reap(keys=_keys(slot), args=[time.time()])]

    def holds(self, slot: str, run_id: int) -> bool:
        score = self.r.zscore(_keys(slot)[0], run_id)
        return score is not None and score > time.time()

    def usage(self, slot: str) -> SlotUsage:
        zset, mem, cpu = _keys(slot)
        now = time.time()
        pipe = self.r.pipeline()
        pipe.zrangebyscore(zset, now, "+inf")
        pipe.hgetall(mem)
        pipe.hgetall(cpu)
        live, mems, cpus = pipe.execute()
        holders = [int(m) for m in live]
        live_set = {str(h).encode() for h in holders}
        return SlotUsage(
            slot=slot,
            holders=holders,
            memory_in_use_mb=sum(float(v) for k, v in mems.items() if k in live_set),
            cpu_in_use=sum(float(v) for k, v in cpus.items() if k in live_set),
        )
