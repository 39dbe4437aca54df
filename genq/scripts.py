"""genq's Lua scripts: every change of job state that touches more than one key, atomically.

Run by the stores (:mod:`genq.store`, :mod:`genq.submissions`, :mod:`genq.worker.work_store`:
the only code that reads or writes genq's job keys). Each script says which
KEYS and ARGV it takes and what it returns.
"""

from __future__ import annotations

from genq import keyspace
from genq.settings import DEFAULT_TENANT

_TERMINAL = "{completed=true, failed=true, cancelled=true, expired=true}"

# Every script that ends a job calls this in the same step: a job with someone to tell (its
# record has `notify`: a batch of a tenant with a webhook, a native job with a callback_url)
# gets its end event into the webhook outbox atomically with the end, and the job stops
# counting against its tenant's quotas. KEYS[4]: the outbox. (The tenant's set is named from
# the record, so it is built here: genq runs on one Redis, no cluster slots to declare.)
_NOTIFY = f"""
local function notify(now)
  local f = redis.call('HMGET', KEYS[1], 'notify', 'id', 'tenant')
  if f[1] then redis.call('ZADD', KEYS[4], 'NX', now, f[2]) end
  if f[2] then
    local tenant = f[3] or '{DEFAULT_TENANT}'
    redis.call('SREM', '{keyspace.tenant_prefix()}' .. tenant .. ':unfinished', f[2])
  end
end
"""

# A job past its deadline turns expired on first sight, by whoever looks (worker or producer).
# KEYS: job, results, attempts, outbox. ARGV[1]: now, ARGV[2]: ttl_s. Returns the status it has
# afterwards.
_EXPIRE_IF_DUE = (
    _NOTIFY
    + """
local function expire_if_due()
  local fields = redis.call('HMGET', KEYS[1], 'status', 'expires_at')
  local status, expires_at = fields[1], fields[2]
  if expires_at and (status == 'queued' or status == 'running')
      and tonumber(ARGV[1]) >= tonumber(expires_at) then
    redis.call('HSET', KEYS[1], 'status', 'expired', 'finished_at', ARGV[1])
    redis.call('EXPIRE', KEYS[1], ARGV[2])
    redis.call('EXPIRE', KEYS[2], ARGV[2])
    redis.call('DEL', KEYS[3])
    notify(ARGV[1])
    return 'expired'
  end
  return status
end
"""
)

# An item index given as text is one of the job's when it is a whole number in 0..total-1.
_VALID_INDEX = """
local function valid_index(text, total)
  local index = tonumber(text)
  return index ~= nil and index >= 0 and index < total and index % 1 == 0
end
"""

# KEYS: job, jobs index, deadlines, tenant's unfinished set, tenant's policy. ARGV: job id, now,
# ttl_s, total, deadline (or ''), then the record's field/value pairs. Writes a new job's record
# (queued) and indexes it, unless that would put the tenant over a quota of its policy
# (max_jobs_in_progress, max_queued_items): then nothing is written. Returns {'ok'} or {what,
# in use, limit}. The quotas count the tenant's unfinished jobs (ended ones are pruned here).
CREATE_JOB = f"""
local id, now, ttl, total = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local policy = redis.call('HMGET', KEYS[5], 'max_jobs_in_progress', 'max_queued_items')
local max_jobs, max_items = tonumber(policy[1] or ''), tonumber(policy[2] or '')
if max_jobs or max_items then
  local terminal = {_TERMINAL}
  local jobs, items = 0, 0
  for _, other in ipairs(redis.call('SMEMBERS', KEYS[4])) do
    local f = redis.call('HMGET', '{keyspace.job_prefix()}' .. other, 'status', 'total',
                         'completed', 'failed')
    if not f[1] or terminal[f[1]] then
      redis.call('SREM', KEYS[4], other)
    else
      jobs = jobs + 1
      items = items + tonumber(f[2]) - tonumber(f[3] or '0') - tonumber(f[4] or '0')
    end
  end
  if max_jobs and jobs + 1 > max_jobs then return {{'max_jobs_in_progress', jobs, max_jobs}} end
  if max_items and items + total > max_items then
    return {{'max_queued_items', items, max_items}}
  end
end
local fields = {{}}
for i = 6, #ARGV do table.insert(fields, ARGV[i]) end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now, id)
if ARGV[5] ~= '' then redis.call('ZADD', KEYS[3], ARGV[5], id) end
redis.call('SADD', KEYS[4], id)
redis.call('EXPIRE', KEYS[4], ttl)
return {{'ok'}}
"""

# KEYS: job, results, attempts, outbox, and kombu's unacked hash and index when ARGV[3] > 0.
# ARGV: now, ttl_s, a count n of delivery tags, the n tags, then (index, ok, json) triples.
# Returns {results that were new, results refused (index outside 0..total-1), then the indexes
# of the new ones}; {-1, 0} when the job no longer exists. The n messages (whose every item
# ends with these results) lose their leases in the same step: kombu's ack, done here so that
# no message ever outlives its results, and without a round trip of its own.
RECORD = (
    _NOTIFY
    + _VALID_INDEX
    + f"""
local settled = tonumber(ARGV[3])
-- Last, after every other write: a script that fails midway keeps what it wrote, and a lease
-- must never go unless the results went first.
local function settle()
  for i = 4, 3 + settled do
    redis.call('ZREM', KEYS[6], ARGV[i])
    redis.call('HDEL', KEYS[5], ARGV[i])
  end
end
if redis.call('EXISTS', KEYS[1]) == 0 then settle() return {{-1, 0}} end
local terminal = {_TERMINAL}
local total = tonumber(redis.call('HGET', KEYS[1], 'total'))
local new_ok, new_failed, refused = 0, 0, 0
local added = {{}}
for i = 4 + settled, #ARGV, 3 do
  if not valid_index(ARGV[i], total) then
    refused = refused + 1
  elseif redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 2]) == 1 then
    if ARGV[i + 1] == '1' then new_ok = new_ok + 1 else new_failed = new_failed + 1 end
    table.insert(added, ARGV[i])
  end
end
local completed = redis.call('HINCRBY', KEYS[1], 'completed', new_ok)
local failed = redis.call('HINCRBY', KEYS[1], 'failed', new_failed)
local status = redis.call('HGET', KEYS[1], 'status')
local ended_before = terminal[status]
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1])
  status = 'running'
end
if status == 'running' and completed + failed >= total then
  redis.call('HSET', KEYS[1], 'status', 'completed', 'finished_at', ARGV[1])
  status = 'completed'
  notify(ARGV[1])
end
if terminal[status] and not ended_before then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
  redis.call('DEL', KEYS[3])
else
  -- results never outlive their job record, even when the job never ends; a late result of
  -- an ended job keeps the record's lifetime (an API batch may have lengthened it)
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
end
settle()
local reply = {{new_ok + new_failed, refused}}
for _, index in ipairs(added) do table.insert(reply, index) end
return reply
"""
)

# KEYS: job, results, attempts, outbox. ARGV: now, ttl_s, then a message's item indexes. Returns
# {status or false, total, the job's default params (JSON), indexes that already have a result,
# the first index that is not one of the job's or false}. A message with such an index changes
# nothing; otherwise a queued job moves to running.
ADMIT = (
    _EXPIRE_IF_DUE
    + _VALID_INDEX
    + """
local status = expire_if_due()
if not status then return {false, 0, '', {}, false} end
local total = tonumber(redis.call('HGET', KEYS[1], 'total') or '0')
for i = 3, #ARGV do
  if not valid_index(ARGV[i], total) then return {status, total, '', {}, ARGV[i]} end
end
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1])
  status = 'running'
end
local done = {}
for i = 3, #ARGV do
  if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 1 then table.insert(done, tonumber(ARGV[i])) end
end
return {status, total, redis.call('HGET', KEYS[1], 'params') or '', done, false}
"""
)

EXPIRE = _EXPIRE_IF_DUE + "return expire_if_due()"

# KEYS: job, results, attempts, outbox. ARGV: now, ttl_s, retry ('1' or '0'), then item indexes.
# Counts an attempt for each item of a running job that was never started (or for every item,
# with retry = '1'). Returns {status or false, counts}: a count > 0 is this attempt's number;
# -n means the item was started n times before and was not counted now.
START = (
    _EXPIRE_IF_DUE
    + """
local status = expire_if_due()
if status ~= 'queued' and status ~= 'running' then return {status, {}} end
local counts = {}
for i = 4, #ARGV do
  local before = tonumber(redis.call('HGET', KEYS[3], ARGV[i]) or '0')
  if before == 0 or ARGV[3] == '1' then
    table.insert(counts, redis.call('HINCRBY', KEYS[3], ARGV[i], 1))
  else
    table.insert(counts, -before)
  end
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[3], ttl) end
return {status, counts}
"""
)

# KEYS: worker, worker batches, workers index. ARGV: now, ttl_s, worker id. Refreshes a live
# worker's record; never recreates a removed or expired one as a partial hash.
HEARTBEAT = """
-- a record that expired (Redis was away) may since have been half recreated by batch counters
if redis.call('HEXISTS', KEYS[1], 'id') == 0 then return 0 end
redis.call('HSET', KEYS[1], 'last_seen', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[3])
return 1
"""

# KEYS: job, results, attempts, outbox. ARGV: now, ttl_s, new status, error. Ends an unfinished
# job. Returns the status the job has afterwards (false if missing).
FINISH = (
    _NOTIFY
    + f"""
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
local terminal = {_TERMINAL}
if terminal[status] then return status end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'finished_at', ARGV[1])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[4]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[3])
notify(ARGV[1])
return ARGV[3]
"""
)


# KEYS: any. ARGV: ttl_s. Gives a TTL to the keys that have none (EXPIRE NX, before Redis 7).
EXPIRE_PERSISTENT = """
for i = 1, #KEYS do
  if redis.call('TTL', KEYS[i]) == -1 then redis.call('EXPIRE', KEYS[i], ARGV[1]) end
end
return 0
"""


# KEYS: one key. ARGV: the value expected, the new value, ttl_s. Replaces the value only if it is
# still the one expected (an idempotency key taken over from a job that is gone). Returns 1 if so.
COMPARE_AND_SET = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""


# KEYS: webhook outbox. ARGV: now, claim_s, limit. Takes up to ``limit`` due events (score <=
# now) and pushes each one's score to now + claim_s, so that no other sender takes it meanwhile
# (a sender that dies leaves it due again after claim_s). Returns {job id, due score} pairs.
CLAIM_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[3])
for i = 1, #due, 2 do
  redis.call('ZADD', KEYS[1], 'XX', tonumber(ARGV[1]) + tonumber(ARGV[2]), due[i])
end
return due
"""
