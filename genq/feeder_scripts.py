"""The fair feeder's Lua scripts: :data:`REFILL`, :data:`STAGE` and :data:`DROP`, run by
:class:`genq.feeder.Feeder` (see :mod:`genq.feeder` for the order they keep). Each script says
which ARGV it takes and what it returns.
"""

from __future__ import annotations

from genq.settings import MIN_AUTO_CHUNK_SIZE

# With the job records on another Redis: how long a staging's number and a cancelled job's
# mark are kept (a producer stages a job within seconds to minutes; a retried staging comes
# within a socket timeout).
MARK_TTL_S = 24 * 3600

# Every key below is built from ARGV[1] (keyspace.sched_prefix), ARGV[4] (job_prefix) and
# ARGV[5] (tenant_prefix): which job's list is read next is known only inside the script, and
# genq's broker is one Redis (no cluster slots to declare keys for). ARGV[2] and ARGV[3] are
# the Celery queue's two lists (urgent, other): kombu's consumer pops the first one first.
# ARGV[8]: '1' when the job records are on this Redis (their status decides whether a job's
# messages go), '0' when they are on another (GENQ_RESULTS_URL): then no job key is touched,
# and ARGV[9] (a pending list's lifetime, s) and ARGV[10] (a staging or drop mark's, s) apply.
_COMMON = (
    f"local ITEMS_PER_MESSAGE = {MIN_AUTO_CHUNK_SIZE}\n"
    + """
local P, URGENT, OTHER, JOBP, TENP = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local DEPTH, STARVE = tonumber(ARGV[6]), tonumber(ARGV[7])
local JOBS_HERE, PENDING_TTL, MARK_TTL = ARGV[8] == '1', tonumber(ARGV[9]), tonumber(ARGV[10])
local LEVELS = {'high', 'normal', 'low'}
-- An expired job's messages still go to workers, which give each item its `expired` result;
-- those of a cancelled or failed job get none, so they are dropped.
local DROPPED = {completed=true, failed=true, cancelled=true}

local function weight(tenant)
  local w = tonumber(redis.call('HGET', TENP .. tenant .. ':policy', 'weight') or '')
  if not w or w <= 0 then return 1 end
  return w
end

-- A job with nothing (more) to dispatch leaves its tenant's ring; a tenant with no job left
-- leaves its level. What it still had pending (an ended job's messages) is dropped.
local function retire(level, tenant, job)
  local ring = P .. 'ring:' .. level .. ':' .. tenant
  redis.call('LREM', ring, -1, job)  -- once in its ring, and near the tail when just served
  redis.call('HDEL', P .. 'active', job)
  redis.call('HDEL', P .. 'queued', job)
  redis.call('DEL', P .. 'pending:' .. job)
  if redis.call('LLEN', ring) == 0 then
    redis.call('ZREM', P .. 'tenants:' .. level, tenant)
    if redis.call('ZCARD', P .. 'tenants:' .. level) == 0 then
      redis.call('HDEL', P .. 'skipped', level)
      redis.call('DEL', P .. 'clock:' .. level)  -- an idle level starts again from 0
    end
  end
end

local function waiting_levels()
  local waiting = {}
  for _, level in ipairs(LEVELS) do
    if redis.call('ZCARD', P .. 'tenants:' .. level) > 0 then table.insert(waiting, level) end
  end
  return waiting
end

-- The most urgent waiting level, unless a less urgent one was passed over STARVE times.
local function pick(waiting)
  for i = #waiting, 2, -1 do
    if tonumber(redis.call('HGET', P .. 'skipped', waiting[i]) or '0') >= STARVE then
      return waiting[i]
    end
  end
  return waiting[1]
end

local function count_skips(waiting, chosen)
  local below = false
  for _, level in ipairs(waiting) do
    if level == chosen then
      redis.call('HDEL', P .. 'skipped', level)
      below = true
    elseif below then
      redis.call('HINCRBY', P .. 'skipped', level, 1)
    end
  end
end

-- The next message of ``level`` in fair order, or nil once the level has none.
local function take(level)
  local tenants = P .. 'tenants:' .. level
  while true do
    local top = redis.call('ZRANGE', tenants, 0, 0, 'WITHSCORES')
    if #top == 0 then return nil end
    local tenant, vt = top[1], tonumber(top[2])
    local ring = P .. 'ring:' .. level .. ':' .. tenant
    local job = redis.call('LINDEX', ring, -1)
    if not job then
      redis.call('ZREM', tenants, tenant)
    else
      local status = 'queued'  -- jobs elsewhere: a cancelled job's list was dropped (DROP)
      if JOBS_HERE then status = redis.call('HGET', JOBP .. job, 'status') end
      local entry = false
      if status and not DROPPED[status] then
        entry = redis.call('RPOP', P .. 'pending:' .. job)
      end
      if entry then
        local sep = string.find(entry, '|', 1, true)
        local items = tonumber(string.sub(entry, 1, sep - 1))
        redis.call('HINCRBY', P .. 'queued', job, -items)
        redis.call('SET', P .. 'clock:' .. level, vt)
        if redis.call('LLEN', P .. 'pending:' .. job) == 0 then
          retire(level, tenant, job)
        else
          redis.call('RPOPLPUSH', ring, ring)  -- the tenant's next job goes next
        end
        if redis.call('ZSCORE', tenants, tenant) then
          redis.call('ZADD', tenants, vt + items / weight(tenant), tenant)
        end
        return string.sub(entry, sep + 1), items
      end
      retire(level, tenant, job)  -- ended, or nothing pending (a producer still staging)
    end
  end
end

-- The messages on a Celery list and the items they hold. Beside each list the feeder keeps
-- the item counts of the messages it pushed, in the same order; workers pop the oldest, so the
-- counts beyond the list's length are the oldest ones, gone. (A message kombu restored after a
-- lost lease has no count: it counts as none, which only lets one more message in.)
local function ready(list)
  local counts = P .. (list == URGENT and 'ready:urgent' or 'ready:other')
  local messages = redis.call('LLEN', list)
  local extra = redis.call('LLEN', counts) - messages
  if extra > 0 and messages == 0 then
    redis.call('DEL', counts)
  elseif extra > 0 then
    redis.call('LTRIM', counts, 0, messages - 1)
  end
  local items = 0
  for _, count in ipairs(redis.call('LRANGE', counts, 0, -1)) do items = items + tonumber(count) end
  return messages, items
end

-- The Celery queue holds up to DEPTH messages and DEPTH x ITEMS_PER_MESSAGE items (one message
-- at least, however large: a job cut into large messages keeps as few prompts ahead of the
-- next job as one of small messages), and as much urgent work on its own list, which workers
-- empty first: staged behind a full queue, urgent work still goes next.
local function fits(messages, items)
  return messages == 0 or (messages < DEPTH and items < DEPTH * ITEMS_PER_MESSAGE)
end

local function room(level)
  local urgent, urgent_items = ready(URGENT)
  if level == 'high' then return fits(urgent, urgent_items) end
  local other, other_items = ready(OTHER)
  return fits(urgent + other, urgent_items + other_items)
end

local function refill()
  local moved = 0
  while true do
    local waiting = waiting_levels()
    if #waiting == 0 then break end
    local level = pick(waiting)
    if not room(level) then
      -- a starved level's turn that cannot be taken now never holds urgent work back
      if waiting[1] == 'high' and room('high') then level = 'high' else break end
    end
    local payload, items = take(level)
    if payload then
      count_skips(waiting, level)
      -- kombu pushes left and pops right: each list stays first in, first out
      redis.call('LPUSH', level == 'high' and URGENT or OTHER, payload)
      redis.call('LPUSH', P .. (level == 'high' and 'ready:urgent' or 'ready:other'), items)
      moved = moved + 1
    end
  end
  return moved
end
"""
)

# ARGV: common (10). Returns the messages moved to the Celery queue.
REFILL = _COMMON + "return refill()"

# ARGV: common (10), job id, priority, tenant, batch number, then entries "items|payload" in the
# job's order. Appends them to the job's pending list, puts the job in its tenant's ring (at the end
# of the current round) and the tenant in its level (at the level's clock), then refills. A batch
# number the job has already staged stages nothing (a command retried after its reply was
# lost). Returns the messages moved to the Celery queue; -1 when the job was cancelled, failed
# or is gone (nothing staged); with the job records elsewhere, when the job was dropped.
STAGE = (
    _COMMON
    + """
local job, level, tenant, batch = ARGV[11], ARGV[12], ARGV[13], tonumber(ARGV[14])
local pending = P .. 'pending:' .. job
local staged, ttl
if JOBS_HERE then
  local fields = redis.call('HMGET', JOBP .. job, 'status', 'staged')
  if not fields[1] or DROPPED[fields[1]] then return -1 end
  staged = fields[2]
else
  if redis.call('EXISTS', P .. 'dropped:' .. job) == 1 then return -1 end
  staged = redis.call('GET', P .. 'staged:' .. job)
end
if batch <= tonumber(staged or '0') then return refill() end
if JOBS_HERE then
  redis.call('HSET', JOBP .. job, 'staged', batch)
  ttl = redis.call('PTTL', JOBP .. job)
else
  redis.call('SET', P .. 'staged:' .. job, batch, 'EX', MARK_TTL)
  ttl = PENDING_TTL * 1000
end
local items = 0
for i = 15, #ARGV do
  redis.call('LPUSH', pending, ARGV[i])
  items = items + tonumber(string.sub(ARGV[i], 1, string.find(ARGV[i], '|', 1, true) - 1))
end
if ttl > 0 then redis.call('PEXPIRE', pending, ttl) end
redis.call('HINCRBY', P .. 'queued', job, items)
if redis.call('HEXISTS', P .. 'active', job) == 0 then
  redis.call('HSET', P .. 'active', job, level .. '\\t' .. tenant)
  -- last in the current round: each job already waiting gets one message first
  redis.call('LPUSH', P .. 'ring:' .. level .. ':' .. tenant, job)
  if not redis.call('ZSCORE', P .. 'tenants:' .. level, tenant) then
    local clock = redis.call('GET', P .. 'clock:' .. level) or '0'
    redis.call('ZADD', P .. 'tenants:' .. level, clock, tenant)
  end
end
return refill()
"""
)

# ARGV: common (10), job id. Drops a job's pending messages (it was cancelled); with the job
# records elsewhere, marks the job so that a producer still staging it stages nothing more.
# Returns 1 if it had any.
DROP = (
    _COMMON
    + """
local job = ARGV[11]
if not JOBS_HERE then redis.call('SET', P .. 'dropped:' .. job, '1', 'EX', MARK_TTL) end
local where = redis.call('HGET', P .. 'active', job)
if not where then
  redis.call('DEL', P .. 'pending:' .. job)
  return 0
end
local tab = string.find(where, '\\t', 1, true)
retire(string.sub(where, 1, tab - 1), string.sub(where, tab + 1), job)
return 1
"""
)
