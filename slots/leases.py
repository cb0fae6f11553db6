"""Cluster-wide slot leases and the per-slot waiting queue, in Redis.

Keys of one slot (``<slot>`` is the slot name):

``smartcron:lease:<slot>``          ZSET  member = run id, score = lease expiry (epoch s)
``smartcron:lease:<slot>:mem``      HASH  run id -> expected peak memory (MB)
``smartcron:lease:<slot>:cpu``      HASH  run id -> CPU claim (percent of the host)
``smartcron:wait:<slot>``           ZSET  member = run id, score = priority rank, then planned time
``smartcron:wait:<slot>:exp``       ZSET  member = run id, score = expiry of the waiting entry
``smartcron:wait:<slot>:need``      HASH  run id -> "memory cpu" the waiting run asks for
``smartcron:wait:<slot>:woken``     ZSET  member = run id woken by a release, score = expiry of that mark

and of one job: ``smartcron:joblease:<job id>`` ZSET member = run id, score = expiry (the
job's running instances, for overlap policies and mutual exclusion between jobs).

Taking a lease is one Lua script, so two dispatchers on two hosts can never both take
the last place, nor start two blocking jobs at once.  Expired members are dropped on
every call: a crashed worker never leaves a slot "full" and nobody resets a counter.

The waiting queue gives priority order: a run is admitted only if the runs queued ahead
of it (critical before high before medium before low, then oldest first) that could be
admitted right now, taken greedily in that order, still leave room for it.  A waiting
entry expires unless its start task refreshes it, so a vanished task cannot block a slot.

All keys live in one Redis (no Redis Cluster: the script touches keys of several jobs).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable

from slots.redis_client import get_redis

PREFIX = "smartcron:lease:"
WAIT_PREFIX = "smartcron:wait:"
JOB_PREFIX = "smartcron:joblease:"
# Float tolerance when summing budgets (five 16.0 % claims must fit in 80 %).
_EPS = 1e-6

_PRUNE = """
local function prune(now)
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)) do
    redis.call('ZREM', KEYS[1], m); redis.call('HDEL', KEYS[2], m); redis.call('HDEL', KEYS[3], m)
  end
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', '(' .. now)) do
    redis.call('ZREM', KEYS[4], m); redis.call('ZREM', KEYS[5], m); redis.call('HDEL', KEYS[6], m)
  end
end
local function unwait(m)
  redis.call('ZREM', KEYS[4], m); redis.call('ZREM', KEYS[5], m); redis.call('HDEL', KEYS[6], m)
end
-- Live holders of the slot, memory and CPU in use (after prune).
local function usage()
  local c = redis.call('ZCARD', KEYS[1])
  local m = 0
  for _, v in ipairs(redis.call('HVALS', KEYS[2])) do m = m + tonumber(v) end
  local u = 0
  for _, v in ipairs(redis.call('HVALS', KEYS[3])) do u = u + tonumber(v) end
  return c, m, u
end
local function parse_need(need)
  local nm, nc = string.match(need, '(%S+) (%S+)')
  return tonumber(nm), tonumber(nc)
end
-- Greedy in line order, every run ahead of `run` that fits takes its place first; the
-- first of them after which (nm, nc) is refused by `refused(c, m, u, nm, nc)`, or nil.
local function ahead_blocker(run, c, m, u, nm, nc, refused)
  for _, other in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
    if other == run then return nil end
    local need = redis.call('HGET', KEYS[6], other)
    if need then
      local om, oc = parse_need(need)
      if not refused(c, m, u, om, oc) then
        c = c + 1; m = m + om; u = u + oc
        if refused(c, m, u, nm, nc) then return other end
      end
    end
  end
  return nil
end
"""

# KEYS: 1 lease zset, 2 mem hash, 3 cpu hash, 4 wait zset, 5 wait expiry zset, 6 wait need hash,
#       7 this job's instance zset, 8.. instance zsets of jobs that must not be running
# ARGV: 1 now, 2 ttl, 3 run id, 4 max jobs, 5 memory need, 6 memory budget, 7 cpu need,
#       8 cpu budget, 9 max instances, 10 waiting score, 11 waiting ttl, 12 epsilon
# Returns {granted, reason, holders, memory in use, cpu in use, detail}
_ACQUIRE = _PRUNE + """
local now = tonumber(ARGV[1])
local run = ARGV[3]
prune(now)
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', '(' .. now)
local count, mem, cpu = usage()
local expiry = now + tonumber(ARGV[2])
if redis.call('ZSCORE', KEYS[1], run) then
  redis.call('ZADD', KEYS[1], expiry, run)
  redis.call('ZADD', KEYS[7], expiry, run)
  unwait(run)
  return {1, 'held', count, tostring(mem), tostring(cpu), ''}
end
for i = 8, #KEYS do
  if redis.call('ZCOUNT', KEYS[i], now, '+inf') > 0 then
    unwait(run)
    return {0, 'blocked', count, tostring(mem), tostring(cpu), tostring(i - 7)}
  end
end
if redis.call('ZCOUNT', KEYS[7], now, '+inf') >= tonumber(ARGV[9]) then
  unwait(run)
  return {0, 'instances', count, tostring(mem), tostring(cpu), ''}
end
local max_jobs = tonumber(ARGV[4])
local mem_budget = tonumber(ARGV[6]) + tonumber(ARGV[12])
local cpu_budget = tonumber(ARGV[8]) + tonumber(ARGV[12])
local need_mem = tonumber(ARGV[5])
local need_cpu = tonumber(ARGV[7])
-- An empty slot admits any single job, however large: otherwise it could never run.
local function refusal(c, m, u, nm, nc)
  if c >= max_jobs then return 'jobs' end
  if c > 0 and m + nm > mem_budget then return 'memory' end
  if c > 0 and u + nc > cpu_budget then return 'cpu' end
  return nil
end
-- Join (or refresh) the waiting queue before looking at who is ahead.
redis.call('ZADD', KEYS[4], ARGV[10], run)
redis.call('ZADD', KEYS[5], now + tonumber(ARGV[11]), run)
redis.call('HSET', KEYS[6], run, ARGV[5] .. ' ' .. ARGV[7])
local why = refusal(count, mem, cpu, need_mem, need_cpu)
if why then
  return {0, why, count, tostring(mem), tostring(cpu), ''}
end
-- Priority order: the runs ahead that fit now take their places first.
local blocker = ahead_blocker(run, count, mem, cpu, need_mem, need_cpu, refusal)
if blocker then
  return {0, 'priority', count, tostring(mem), tostring(cpu), blocker}
end
redis.call('ZADD', KEYS[1], expiry, run)
redis.call('HSET', KEYS[2], run, ARGV[5])
redis.call('HSET', KEYS[3], run, ARGV[7])
redis.call('ZADD', KEYS[7], expiry, run)
unwait(run)
return {1, 'ok', count + 1, tostring(mem + need_mem), tostring(cpu + need_cpu), ''}
"""

# A waiting run's poll: is there still no room for it?  Then it keeps its place in line
# (its entry is refreshed) and nothing else needs checking.  "No room" is what acquire
# would say: the slot is full for it, or the runs ahead of it in line that fit take the
# room first.  0 when it is not waiting here (any more) or might get a place: the caller
# goes through full admission.
# KEYS: 1-6 as for acquire; ARGV: 1 now, 2 max jobs, 3 memory budget, 4 cpu budget,
#       5 waiting ttl, 6 run id, 7 epsilon
_STILL_FULL = _PRUNE + """
local now = tonumber(ARGV[1])
local run = ARGV[6]
prune(now)
local need = redis.call('HGET', KEYS[6], run)
if not need or not redis.call('ZSCORE', KEYS[4], run) then return 0 end
local max_jobs = tonumber(ARGV[2])
local mem_budget = tonumber(ARGV[3]) + tonumber(ARGV[7])
local cpu_budget = tonumber(ARGV[4]) + tonumber(ARGV[7])
local function full(c, m, u, nm, nc)
  return c >= max_jobs or (c > 0 and (m + nm > mem_budget or u + nc > cpu_budget))
end
local c, m, u = usage()
local nm, nc = parse_need(need)
if not full(c, m, u, nm, nc) and not ahead_blocker(run, c, m, u, nm, nc, full) then return 0 end
redis.call('ZADD', KEYS[5], now + tonumber(ARGV[5]), run)
return 1
"""

# Who in the line should be woken now: greedily in line order, the runs that would get a
# place (what acquire does for each of them), at most ARGV[5].  A run already woken and
# not yet back (KEYS[7], member = run, score = expiry of the mark) counts as taking its
# place but is not woken twice: many releases in a row wake many different runs.
# KEYS: 1-6 as for acquire, 7 woken zset; ARGV: 1 now, 2 max jobs, 3 memory budget,
#       4 cpu budget, 5 limit, 6 epsilon, 7 how long a wake mark lasts (s)
_FITS = _PRUNE + """
local now = tonumber(ARGV[1])
prune(now)
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', '(' .. now)
local max_jobs = tonumber(ARGV[2])
local mem_budget = tonumber(ARGV[3]) + tonumber(ARGV[6])
local cpu_budget = tonumber(ARGV[4]) + tonumber(ARGV[6])
local limit = tonumber(ARGV[5])
local c, m, u = usage()
local out = {}
for _, w in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
  if c >= max_jobs or #out >= limit then break end
  local need = redis.call('HGET', KEYS[6], w)
  if need then
    local nm, nc = parse_need(need)
    if c == 0 or (m + nm <= mem_budget and u + nc <= cpu_budget) then
      c = c + 1; m = m + nm; u = u + nc
      if not redis.call('ZSCORE', KEYS[7], w) then
        out[#out + 1] = w
        redis.call('ZADD', KEYS[7], now + tonumber(ARGV[7]), w)
      end
    end
  end
end
return out
"""

# Renew only a lease still held and not yet expired: a holder whose lease ran out has
# lost its place (someone else may already have it) and must stop its job.
# KEYS: 1 lease zset, 2 job instance zset; ARGV: now, new expiry, run id
_RENEW = """
local s = redis.call('ZSCORE', KEYS[1], ARGV[3])
if s and tonumber(s) >= tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[3])
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
  return 1
end
return 0
"""

# The script ended: give its place in the slot back at once, but keep the job instance
# (overlap, exclusion) until the run's row is closed.  Never revives an expired instance.
# KEYS: 1 lease zset, 2 mem, 3 cpu, 4 job instance zset; ARGV: now, new expiry, run id
_FREE_PLACE = """
redis.call('ZREM', KEYS[1], ARGV[3]); redis.call('HDEL', KEYS[2], ARGV[3]); redis.call('HDEL', KEYS[3], ARGV[3])
local s = redis.call('ZSCORE', KEYS[4], ARGV[3])
if s and tonumber(s) >= tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[4], ARGV[2], ARGV[3])
  return 1
end
return 0
"""

# KEYS: 1 lease zset, 2 mem, 3 cpu, 4 wait zset, 5 wait expiry, 6 wait need; ARGV: now
# Returns the run ids whose lease expired.
_REAP = _PRUNE + """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
prune(tonumber(ARGV[1]))
return expired
"""

# Drop hash fields that have no lease (usage is always rebuilt from the live lease set).
# KEYS: 1 lease zset, 2 mem, 3 cpu
_REBUILD = """
local fixed = 0
for i = 2, 3 do
  for _, m in ipairs(redis.call('HKEYS', KEYS[i])) do
    if not redis.call('ZSCORE', KEYS[1], m) then redis.call('HDEL', KEYS[i], m); fixed = fixed + 1 end
  end
end
return fixed
"""


def slot_keys(slot: str) -> list[str]:
    """The six keys of one slot, in the order the scripts expect."""
    return [f"{PREFIX}{slot}", f"{PREFIX}{slot}:mem", f"{PREFIX}{slot}:cpu",
            f"{WAIT_PREFIX}{slot}", f"{WAIT_PREFIX}{slot}:exp", f"{WAIT_PREFIX}{slot}:need"]


def woken_key(slot: str) -> str:
    """ZSET of the slot's runs woken by a release and not back yet (member = run, score = expiry)."""
    return f"{WAIT_PREFIX}{slot}:woken"


def job_key(job_id: int) -> str:
    return f"{JOB_PREFIX}{job_id}"


def waiting_score(priority_rank: int, planned_epoch: float) -> float:
    """Priority rank first, then the planned second (ms precision; fits a double exactly)."""
    return priority_rank * 1e13 + round(planned_epoch * 1000)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclasses.dataclass
class LeaseAttempt:
    granted: bool
    reason: str  # ok | held | blocked | instances | jobs | memory | cpu | priority
    holders: int
    memory_in_use_mb: float
    cpu_in_use: float
    detail: str = ""  # blocked: 1-based index of the blocking job; priority: the run ahead


@dataclasses.dataclass
class Holder:
    run_id: int
    expires_at: float
    memory_mb: float
    cpu: float


@dataclasses.dataclass
class Waiter:
    run_id: int
    score: float
    memory_mb: float
    cpu: float
    expires_at: float


@dataclasses.dataclass
class SlotUsage:
    slot: str
    holders: list[Holder]
    memory_in_use_mb: float
    cpu_in_use: float

    @property
    def holder_ids(self) -> list[int]:
        return [h.run_id for h in self.holders]


class LeaseStore:
    """Thin wrapper around the Lua scripts; safe to share between threads."""

    # Registered scripts per client (registering hashes the script text: once per client,
    # not once per LeaseStore, which tasks create on every call).
    _scripts: dict[int, tuple] = {}

    def __init__(self, client=None) -> None:
        self.r = client or get_redis()
        cached = self._scripts.get(id(self.r))
        if cached is None or cached[0] is not self.r:
            cached = (self.r, *(self.r.register_script(text) for text in (
                _ACQUIRE, _RENEW, _REAP, _REBUILD, _FREE_PLACE, _STILL_FULL, _FITS)))
            self._scripts[id(self.r)] = cached
        (_, self._acquire, self._renew, self._reap, self._rebuild, self._free_place, self._still_full,
         self._fits) = cached

    def acquire(self, slot: str, run_id: int, *, ttl: float, max_jobs: int, memory_mb: float,
                memory_budget_mb: float, cpu: float = 0.0, cpu_budget: float = 1e9, job_id: int = 0,
                max_instances: int = 1_000_000, exclusive_with: Iterable[int] = (),
                waiting_score: float = 0.0, waiting_ttl: float = 10.0) -> LeaseAttempt:
        """Take a place in ``slot`` for ``run_id`` if everything fits (atomically).

        ``exclusive_with``: job ids none of whose runs may hold a lease right now.
        """
        keys = slot_keys(slot) + [job_key(job_id)] + [job_key(j) for j in exclusive_with]
        res = self._acquire(keys=keys, args=[
            repr(time.time()), ttl, run_id, max_jobs, round(memory_mb, 3), memory_budget_mb, round(cpu, 3),
            cpu_budget, max_instances, repr(waiting_score), waiting_ttl, _EPS])
        return LeaseAttempt(bool(res[0]), _text(res[1]), int(res[2]), float(_text(res[3])), float(_text(res[4])),
                            _text(res[5]))

    def still_full(self, slot: str, run_id: int, *, max_jobs: int, memory_budget_mb: float, cpu_budget: float,
                   waiting_ttl: float) -> bool:
        """True if ``run_id`` waits in ``slot``'s line and there is no room for it yet (entry refreshed)."""
        return bool(self._still_full(keys=slot_keys(slot), args=[
            repr(time.time()), max_jobs, memory_budget_mb, cpu_budget, waiting_ttl, run_id, _EPS]))

    def fits(self, slot: str, *, max_jobs: int, memory_budget_mb: float, cpu_budget: float,
             limit: int = 1000, mark_s: float = 2.0) -> list[int]:
        """Waiting runs of ``slot`` to wake now: those that would get a place, greedily in line order,
        minus those woken less than ``mark_s`` ago that have not come back yet (see ``woken_back``)."""
        return [int(m) for m in self._fits(keys=slot_keys(slot) + [woken_key(slot)], args=[
            repr(time.time()), max_jobs, memory_budget_mb, cpu_budget, limit, _EPS, mark_s])]

    def woken_back(self, slot: str, run_id: int) -> None:
        """A woken run made its attempt: it may be woken again."""
        self.r.zrem(woken_key(slot), run_id)

    def waiting_in_line(self, slot_of_run: dict[int, str]) -> set[int]:
        """Which of these runs (run id -> slot name) hold a place in their slot's line."""
        if not slot_of_run:
            return set()
        pipe = self.r.pipeline(transaction=False)
        for run_id, slot in slot_of_run.items():
            pipe.zscore(slot_keys(slot)[3], run_id)
        return {run_id for run_id, score in zip(slot_of_run, pipe.execute(), strict=True) if score is not None}

    def renew(self, slot: str, run_id: int, *, ttl: float, job_id: int = 0) -> bool:
        now = time.time()
        return bool(self._renew(keys=[slot_keys(slot)[0], job_key(job_id)], args=[repr(now), repr(now + ttl), run_id]))

    def release(self, slot: str, run_id: int, job_id: int | None = None, *,
                also: tuple[tuple, ...] = ()) -> None:
        """Take the run out of the slot (lease, line, job instance) in one round trip.

        ``also``: more commands for the same round trip, e.g. ``("delete", key)`` for
        another module's per-run keys.
        """
        zset, mem, cpu, wait, wexp, wneed = slot_keys(slot)
        pipe = self.r.pipeline()
        pipe.zrem(zset, run_id)
        pipe.hdel(mem, run_id)
        pipe.hdel(cpu, run_id)
        pipe.zrem(wait, run_id)
        pipe.zrem(wexp, run_id)
        pipe.hdel(wneed, run_id)
        if job_id is not None:
            pipe.zrem(job_key(job_id), run_id)
        for command, *args in also:
            getattr(pipe, command)(*args)
        pipe.execute()

    def free_place(self, slot: str, run_id: int, *, job_id: int, ttl: float) -> bool:
        """The script is gone: free the slot place now, hold the job instance ``ttl`` more seconds."""
        now = time.time()
        return bool(self._free_place(keys=slot_keys(slot)[:3] + [job_key(job_id)],
                                     args=[repr(now), repr(now + ttl), run_id]))

    def leave_waiting(self, slot: str, run_id: int) -> None:
        """Take a run out of the slot's waiting queue (it waits for something else, or is gone)."""
        _, _, _, wait, wexp, wneed = slot_keys(slot)
        pipe = self.r.pipeline()
        pipe.zrem(wait, run_id)
        pipe.zrem(wexp, run_id)
        pipe.hdel(wneed, run_id)
        pipe.execute()

    def reap(self, slot: str) -> list[int]:
        """Drop expired leases and waiting entries; return the runs whose holder stopped heartbeating."""
        return [int(m) for m in self._reap(keys=slot_keys(slot), args=[repr(time.time())])]

    def rebuild(self, slot: str) -> int:
        """Remove memory/CPU claims that have no lease; return how many were fixed."""
        return int(self._rebuild(keys=slot_keys(slot)[:3]))

    def holds(self, slot: str, run_id: int) -> bool:
        score = self.r.zscore(slot_keys(slot)[0], run_id)
        return score is not None and score >= time.time()

    def usage(self, slot: str) -> SlotUsage:
        """Live holders of ``slot`` (expired leases are ignored, not counted)."""
        zset, mem, cpu = slot_keys(slot)[:3]
        now = time.time()
        pipe = self.r.pipeline()
        pipe.zrangebyscore(zset, now, "+inf", withscores=True)
        pipe.hgetall(mem)
        pipe.hgetall(cpu)
        live, mems, cpus = pipe.execute()
        mems = {_text(k): float(v) for k, v in mems.items()}
        cpus = {_text(k): float(v) for k, v in cpus.items()}
        holders = [Holder(int(m), float(score), mems.get(_text(m), 0.0), cpus.get(_text(m), 0.0)) for m, score in live]
        return SlotUsage(slot=slot, holders=holders, memory_in_use_mb=sum(h.memory_mb for h in holders),
                         cpu_in_use=sum(h.cpu for h in holders))

    def waiting(self, slot: str) -> list[Waiter]:
        """The slot's live waiting queue, first in line first."""
        _, _, _, wait, wexp, wneed = slot_keys(slot)
        now = time.time()
        pipe = self.r.pipeline()
        pipe.zrange(wait, 0, -1, withscores=True)
        pipe.zrange(wexp, 0, -1, withscores=True)
        pipe.hgetall(wneed)
        members, expiries, needs = pipe.execute()
        exp = {_text(m): float(s) for m, s in expiries}
        need = {_text(k): _text(v).split() for k, v in needs.items()}
        out = []
        for m, score in members:
            key = _text(m)
            if exp.get(key, 0.0) < now:
                continue
            mem_mb, cpu = need.get(key, ["0", "0"])
            out.append(Waiter(int(key), float(score), float(mem_mb), float(cpu), exp[key]))
        return out

    def job_instances(self, job_id: int) -> list[int]:
        """Runs of ``job_id`` holding a live lease."""
        return [int(m) for m in self.r.zrangebyscore(job_key(job_id), time.time(), "+inf")]
