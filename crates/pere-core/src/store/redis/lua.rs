//! The Lua scripts of the Redis store: each change that must be atomic (an append with its id,
//! idempotency key, pruning and notice; a receipt, or a batch of them, with its seq and device
//! record; a membership;
//! a node's count of streams with the cluster-wide presence it changes) runs as one script,
//! which Redis executes alone.
//!
//! Every key a script touches shares the channel's hash tag, so a script stays in one slot of a
//! Redis Cluster; its keys come in `KEYS`, the channel's first. The per-event keys (`:rc:ID`,
//! `:ra:ID`) are built from the channel's base name (`ARGV` `base`) inside the script:
//! declared keys would need one per pruned event. The notices go out on the channel's own
//! shard channel (`SPUBLISH` on `{PREFIX:ch:NAME}:bus`), in the same slot.
//!
//! Every channel script declares, last, the channel's `:slot` key, which is never written.
//! While a slot moves between cluster nodes, its keys are on either node, and a script that
//! touched a key its node does not hold would fail half done (Redis scripts do not roll back).
//! Redis refuses instead to start a script whose declared keys are not all on the node during
//! a move (TRYAGAIN, or ASK and then TRYAGAIN): the key that is never written makes that so for
//! every script, until the slot has moved; the cluster's client sends the script again.

/// Device record helpers shared by the scripts that change one (`DeviceRecord::apply` and
/// `apply_receipt` in Lua). A record is JSON: `fs` first seen, `ls` last seen (ms), `op`, `lei`
/// (absent for none), `ld` last delivered, `la` last acked, `n` receipts.
const DEVICE: &str = r#"
local function device_first(op, at, lei, delivered)
  return {fs = at, ls = at, op = op, lei = lei, ld = delivered, la = 0, n = 0}
end
local function device_load(hash, device)
  local raw = redis.call('HGET', hash, device)
  if raw then return cjson.decode(raw) end
  return nil
end
local function device_save(hash, zset, device, r)
  local json = cjson.encode(r)
  redis.call('HSET', hash, device, json)
  redis.call('ZADD', zset, 0, device)
  return json
end
local function entry_id(stream_id)
  return tonumber(string.match(stream_id, '^(%d+)'))
end
local function first_retained(ev, head)
  local first = redis.call('XRANGE', ev, '-', '+', 'COUNT', 1)
  if #first > 0 then return entry_id(first[1][1]) end
  return head + 1
end
"#;

/// What every script that hands out ids or takes receipts checks first: that the channel's keys
/// are the store this node knows (`:sid`), that the store holds at least what the node saw of
/// the channel (its `known` head, unless the floor already covers it), and, on one server or Sentinel's primary, where a script may
/// read any key, that the store's identity (`PREFIX:store`) is still the node's. Any of these
/// failing means the store changed under the node: the script changes nothing and answers
/// `{-3}`. `pass_floor` takes a channel's sequence up to the store's floor, the ids between lost.
pub(crate) const IDENTITY: &str = r#"
local function same_store(seq_key, sid_key, global_key, store, floor, known, claim)
  if global_key and redis.call('HGET', global_key, 'id') ~= store then return false end
  local sid = redis.call('GET', sid_key)
  if sid and sid ~= store then return false end
  if math.max(tonumber(redis.call('GET', seq_key) or '0'), floor) < known then return false end
  if claim and not sid then redis.call('SET', sid_key, store) end
  return true
end
local function pass_floor(seq_key, lost_key, floor)
  local seq = tonumber(redis.call('GET', seq_key) or '0')
  if seq < floor then
    redis.call('RPUSH', lost_key, (seq + 1) .. '-' .. floor)
    redis.call('SET', seq_key, floor)
  end
end
"#;

/// KEYS: seq, ev, keys, sid, lost, store (one server only), slot. ARGV: max_events, max_age_ms (0: none), window_ms (0: keys live as
/// long as their events), node, channel, bus (the channel's shard channel), base, strict ('1': a held key with another body or type
/// fails the whole call, as a batch must), events (a JSON array of `{b, p?, y?, k?}`).
/// Keys are per publisher: `keys` holds each in its publisher's scope, `PUBLISHER/KEY` (`/KEY`
/// for an anonymous one), as `store::scoped_key` builds it. An older version's fields (bare
/// keys) answer no push (a found event's publisher and key must be the push's), and leave with
/// their events.
/// Every key is checked before anything changes (all or none). Returns `{-2, id, key}` for a
/// conflict (id 0: an earlier event of the same call holds the key), else `{1, answers}` with
/// one answer per event: `{1, id, time_ms}` new, `{0, id, fields}` stored under its key before,
/// `{2, i}` the same as the call's i-th event (1-based). ARGV 10 to 12: the store's id, its
/// floor, the node's known head of the channel; `{-3}` when the store changed (see
/// [`IDENTITY`]).
pub(crate) const APPEND: &str = r#"
local global = nil
if #KEYS == 7 then global = KEYS[6] end
if not same_store(KEYS[1], KEYS[4], global, ARGV[10], tonumber(ARGV[11]), tonumber(ARGV[12]), true) then return {-3} end
local events = cjson.decode(ARGV[9])
local strict = ARGV[8] == '1'
local window = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function field(f, name)
  for j = 1, #f, 2 do if f[j] == name then return f[j + 1] end end
  return nil
end
local function scoped(p, k) return (p or '') .. '/' .. k end
local plan, first_with = {}, {}
for i, e in ipairs(events) do
  plan[i] = {1}
  local k = e.k
  if k then
    local sk = scoped(e.p, k)
    local earlier = first_with[sk]
    if earlier then
      local f = events[earlier]
      if f.b ~= e.b or f.y ~= e.y then return {-2, 0, k} end
      plan[i] = {2, earlier}
    else
      local old = redis.call('HGET', KEYS[3], sk)
      local held = nil
      if old then
        local found = redis.call('XRANGE', KEYS[2], old .. '-0', old .. '-0')
        -- Publisher and key are checked too: an older version's bare field may read as a scope.
        if #found > 0 and field(found[1][2], 'p') == e.p and field(found[1][2], 'k') == k
            and (window == 0 or tonumber(field(found[1][2], 't')) >= now - window) then
          held = found[1][2]
        end
      end
      if held then
        if strict and (field(held, 'b') ~= e.b or field(held, 'y') ~= e.y) then
          return {-2, tonumber(old), k}
        end
        plan[i] = {0, tonumber(old), held}
      else
        first_with[sk] = i
      end
    end
  end
end
local answers = {}
for i, e in ipairs(events) do
  local p = plan[i]
  if p[1] == 1 then
    pass_floor(KEYS[1], KEYS[5], tonumber(ARGV[11]))
    local id = redis.call('INCR', KEYS[1])
    local fields = {'t', tostring(now), 'b', e.b}
    local notice = {n = ARGV[4], k = 'e', c = ARGV[5], i = id, t = now, b = e.b}
    if e.p then table.insert(fields, 'p'); table.insert(fields, e.p); notice.p = e.p end
    if e.y then table.insert(fields, 'y'); table.insert(fields, e.y); notice.y = e.y end
    if e.k then
      table.insert(fields, 'k'); table.insert(fields, e.k); notice.x = e.k
      redis.call('HSET', KEYS[3], scoped(e.p, e.k), id)
    end
    redis.call('XADD', KEYS[2], id .. '-0', unpack(fields))
    redis.call('SPUBLISH', ARGV[6], cjson.encode(notice))
    answers[i] = {1, id, now}
  else
    answers[i] = p
  end
end
local max_events = tonumber(ARGV[1])
local cutoff = -1
if tonumber(ARGV[2]) > 0 then cutoff = now - tonumber(ARGV[2]) end
local len = redis.call('XLEN', KEYS[2])
-- Bounded, so one append never stalls Redis; what is left goes with the next appends.
for _ = 1, 1000 do
  local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
  if #first == 0 then break end
  local fid = string.match(first[1][1], '^(%d+)')
  local f = first[1][2]
  local ft, fk = tonumber(field(f, 't') or '0'), field(f, 'k')
  if not (len > max_events or ft < cutoff) then break end
  redis.call('XDEL', KEYS[2], first[1][1])
  if fk then
    -- Scoped as now, or bare as an older version held it.
    for _, name in ipairs({scoped(field(f, 'p'), fk), fk}) do
      if redis.call('HGET', KEYS[3], name) == fid then redis.call('HDEL', KEYS[3], name) end
    end
  end
  redis.call('DEL', ARGV[7] .. ':rc:' .. fid, ARGV[7] .. ':ra:' .. fid)
  len = len - 1
end
return {1, answers}
"#;

/// KEYS: seq, ev, rseq, rlog, dev, devs, rkey (the receipt key's own key), sid, store (one server
/// only), slot. ARGV 12 to 14: the store's id, its floor (an id under it was handed out before
/// the store changed: as good as pruned), the node's known head; `{-3}` when the store changed.
/// ARGV: event_id,
/// device, status, time_ms, max_events, node, channel, bus, base, key ('' for none), window_ms (0:
/// as long as the receipt is retained). The key is in its device's scope, `DEVICE/KEY`, as
/// `store::scoped_key` builds it, and so is `rkey` (`:rk:DEVICE/KEY`): keys are per device. A
/// keyed receipt's `rlog` entry carries its scoped key (`k`), so the key goes when the receipt
/// leaves the stream. Returns `{-1}` for an unknown event, `{0, receipt,
/// record}` for the receipt already recorded under the key, else `{receipt, record}` (JSON).
pub(crate) const RECEIPT: &str = r#"
local global = nil
if #KEYS == 10 then global = KEYS[9] end
if not same_store(KEYS[1], KEYS[8], global, ARGV[12], tonumber(ARGV[13]), tonumber(ARGV[14]), false) then return {-3} end
local window = tonumber(ARGV[11])
if ARGV[10] ~= '' then
  local old = redis.call('GET', KEYS[7])
  if old then
    local found = redis.call('XRANGE', KEYS[4], old .. '-0', old .. '-0')
    if #found > 0 then
      local receipt = found[1][2][2]
      local stored = cjson.decode(receipt)
      local t = redis.call('TIME')
      local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      -- Device and scoped key are checked too: an older version's `:rk:KEY` may read as a scope.
      if stored.d == ARGV[2] and found[1][2][4] == ARGV[10]
          and (window == 0 or stored.t >= now - window) then
        return {0, receipt, redis.call('HGET', KEYS[5], stored.d)}
      end
    end
  end
end
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
local eid = tonumber(ARGV[1])
if eid < 1 or eid > math.max(head, tonumber(ARGV[13])) then return {-1} end
local at = tonumber(ARGV[4])
local r = device_load(KEYS[5], ARGV[2]) or device_first('feedback', at, nil, 0)
r.ls = math.max(r.ls, at)
r.op = 'feedback'
r.lei = ARGV[1]
r.la = math.max(r.la, eid)
r.ld = math.max(r.ld, eid)
r.n = r.n + 1
local record = device_save(KEYS[5], KEYS[6], ARGV[2], r)
local seq = redis.call('INCR', KEYS[3])
local receipt = cjson.encode({q = seq, e = eid, d = ARGV[2], s = ARGV[3], t = at})
local entry = {'j', receipt}
if ARGV[10] ~= '' then table.insert(entry, 'k'); table.insert(entry, ARGV[10]) end
redis.call('XADD', KEYS[4], seq .. '-0', unpack(entry))
-- Trimmed here rather than by MAXLEN, so that a receipt's key leaves with the receipt: without
-- a window the key has no expiry of its own. One receipt in, at most a few out.
for _ = 1, 8 do
  if redis.call('XLEN', KEYS[4]) <= tonumber(ARGV[5]) then break end
  local oldest = redis.call('XRANGE', KEYS[4], '-', '+', 'COUNT', 1)[1]
  local f = oldest[2]
  if f[3] == 'k' then
    local held = ARGV[9] .. ':rk:' .. f[4]
    if redis.call('GET', held) == string.match(oldest[1], '^(%d+)') then redis.call('DEL', held) end
  end
  redis.call('XDEL', KEYS[4], oldest[1])
end
if eid >= first_retained(KEYS[2], head) then
  redis.call('RPUSH', ARGV[9] .. ':rc:' .. eid, receipt)
  redis.call('SADD', ARGV[9] .. ':ra:' .. eid, ARGV[2])
end
if ARGV[10] ~= '' then
  if window > 0 then
    redis.call('SET', KEYS[7], seq, 'PX', window)
  else
    redis.call('SET', KEYS[7], seq)
  end
end
redis.call('SPUBLISH', ARGV[8], cjson.encode({n = ARGV[6], k = 'r', c = ARGV[7], r = receipt}))
return {receipt, record}
"#;

/// Several receipts of one device, all or none (see `Store::record_receipts`): every line is
/// planned (its event id, its key, whether the device acknowledged the event) before anything
/// changes, then the new receipts are recorded as [`RECEIPT`] records one, in line order, the
/// device's record saved once.
/// KEYS: seq, ev, rseq, rlog, dev, devs, sid, store (one server only), slot. ARGV: device,
/// time_ms, max_events, node, channel, bus, base, window_ms (0: as long as the receipt is
/// retained), the store's id, its floor, the node's known head, unacknowledged_only ('1': lines
/// whose event the device acknowledged, or an earlier line names, are left out), lines (a JSON
/// array of `{e, s, k?}`, the event id `e` as text, as stream ids are: never a Lua number in a
/// key's name). The receipt keys are the device's (`:rk:DEVICE/KEY`, see [`RECEIPT`]), built
/// from `base`. Returns `{-3}`
/// when the store changed (see [`IDENTITY`]), `{-1, i}` when line i (1-based) names an
/// unknown event, `{-2, id, key}` for a key held for another receipt (id 0: an earlier line's),
/// else `{1, answers}`: per line `{1, receipt}` new, `{0, receipt}` held under its key,
/// `{2, i}` the same as line i's, `{3}` left out.
pub(crate) const RECEIPTS: &str = r#"
local global = nil
if #KEYS == 9 then global = KEYS[8] end
if not same_store(KEYS[1], KEYS[7], global, ARGV[9], tonumber(ARGV[10]), tonumber(ARGV[11]), false) then return {-3} end
local device = ARGV[1]
local at = tonumber(ARGV[2])
local base = ARGV[7]
local window = tonumber(ARGV[8])
local only_new = ARGV[12] == '1'
local lines = cjson.decode(ARGV[13])
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
local known = math.max(head, tonumber(ARGV[10]))
local now = nil
local plan, first_with, taken = {}, {}, {}
local function scoped(k) return device .. '/' .. k end
for i, l in ipairs(lines) do
  local eid = tonumber(l.e)
  if eid < 1 or eid > known then return {-1, i} end
  plan[i] = {1}
  local decided = false
  local k = l.k
  if k then
    local earlier = first_with[k]
    if earlier then
      local f = lines[earlier]
      if f.e ~= l.e or f.s ~= l.s then return {-2, 0, k} end
      plan[i] = {2, earlier}
      decided = true
    else
      first_with[k] = i
      local old = redis.call('GET', base .. ':rk:' .. scoped(k))
      if old then
        local found = redis.call('XRANGE', KEYS[4], old .. '-0', old .. '-0')
        if #found > 0 then
          local receipt = found[1][2][2]
          local stored = cjson.decode(receipt)
          if not now then
            local t = redis.call('TIME')
            now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
          end
          if stored.d == device and found[1][2][4] == scoped(k)
              and (window == 0 or stored.t >= now - window) then
            if stored.e ~= eid or stored.s ~= l.s then return {-2, stored.e, k} end
            plan[i] = {0, receipt}
            decided = true
          end
        end
      end
    end
  end
  if not decided and only_new then
    if taken[eid] or redis.call('SISMEMBER', base .. ':ra:' .. l.e, device) == 1 then
      plan[i] = {3}
    end
    taken[eid] = true
  end
end
local r = nil
local first = first_retained(KEYS[2], head)
local added = 0
local answers = {}
for i, l in ipairs(lines) do
  local p = plan[i]
  if p[1] == 1 then
    local eid = tonumber(l.e)
    r = r or device_load(KEYS[5], device) or device_first('feedback', at, nil, 0)
    r.ls = math.max(r.ls, at)
    r.op = 'feedback'
    r.lei = l.e
    r.la = math.max(r.la, eid)
    r.ld = math.max(r.ld, eid)
    r.n = r.n + 1
    local seq = redis.call('INCR', KEYS[3])
    local receipt = cjson.encode({q = seq, e = eid, d = device, s = l.s, t = at})
    local entry = {'j', receipt}
    if l.k then table.insert(entry, 'k'); table.insert(entry, scoped(l.k)) end
    redis.call('XADD', KEYS[4], seq .. '-0', unpack(entry))
    if eid >= first then
      redis.call('RPUSH', base .. ':rc:' .. l.e, receipt)
      redis.call('SADD', base .. ':ra:' .. l.e, device)
    end
    if l.k then
      if window > 0 then
        redis.call('SET', base .. ':rk:' .. scoped(l.k), seq, 'PX', window)
      else
        redis.call('SET', base .. ':rk:' .. scoped(l.k), seq)
      end
    end
    redis.call('SPUBLISH', ARGV[6], cjson.encode({n = ARGV[4], k = 'r', c = ARGV[5], r = receipt}))
    added = added + 1
    answers[i] = {1, receipt}
  else
    answers[i] = p
  end
end
if r then device_save(KEYS[5], KEYS[6], device, r) end
-- Trimmed as the receipt script trims, a few more steps for each receipt added.
for _ = 1, added + 8 do
  if redis.call('XLEN', KEYS[4]) <= tonumber(ARGV[3]) then break end
  local oldest = redis.call('XRANGE', KEYS[4], '-', '+', 'COUNT', 1)[1]
  local f = oldest[2]
  if f[3] == 'k' then
    local held = base .. ':rk:' .. f[4]
    if redis.call('GET', held) == string.match(oldest[1], '^(%d+)') then redis.call('DEL', held) end
  end
  redis.call('XDEL', KEYS[4], oldest[1])
end
return {1, answers}
"#;

/// KEYS: seq, sid, lost, slot. ARGV: the store's id, the floor. Takes the channel (after the
/// store changed under a node that had it loaded) into the store the node adopted, its sequence
/// up to the floor.
pub(crate) const RESEED: &str = r#"
redis.call('SET', KEYS[2], ARGV[1])
pass_floor(KEYS[1], KEYS[3], tonumber(ARGV[2]))
return 1
"#;

/// KEYS: the store's identity hash (`PREFIX:store`). ARGV: a new id, the node's high water,
/// `1` when the node found the store changed (the new identity then starts the nodes' time to
/// raise the floor). Makes the identity when there is none, raises its floor to the high water,
/// and answers `{id, since_ms, floor, now_ms}` (`since` 0: a store made new, nobody to wait for).
pub(crate) const ADOPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('HEXISTS', KEYS[1], 'id') == 0 then
  local since = 0
  if ARGV[3] == '1' then since = now end
  redis.call('HSET', KEYS[1], 'id', ARGV[1], 'since', since, 'floor', 0)
end
local floor = tonumber(redis.call('HGET', KEYS[1], 'floor') or '0')
if tonumber(ARGV[2]) > floor then
  floor = tonumber(ARGV[2])
  redis.call('HSET', KEYS[1], 'floor', floor)
end
return {redis.call('HGET', KEYS[1], 'id'), tonumber(redis.call('HGET', KEYS[1], 'since') or '0'), floor, now}
"#;

/// KEYS: dev, devs, slot. ARGV: device, op, at_ms, has_lei ('0'/'1'), lei, delivered.
/// Returns the record (JSON).
pub(crate) const TOUCH: &str = r#"
local at = tonumber(ARGV[3])
local delivered = tonumber(ARGV[6])
local lei = nil
if ARGV[4] == '1' then lei = ARGV[5] end
local r = device_load(KEYS[1], ARGV[1])
if r then
  r.ls = math.max(r.ls, at)
  if ARGV[2] == 'feed' or ARGV[2] == 'feedback' then
    r.op = ARGV[2]
    r.lei = lei
  end
  r.ld = math.max(r.ld, delivered)
else
  r = device_first(ARGV[2], at, lei, delivered)
end
return device_save(KEYS[1], KEYS[2], ARGV[1], r)
"#;

/// KEYS: seq, mem, memcur, slot. ARGV: device, since_ms, node, channel, bus. Returns the current
/// membership (JSON).
pub(crate) const ADD_RECIPIENT: &str = r#"
local idx = redis.call('HGET', KEYS[3], ARGV[1])
if idx then return redis.call('LINDEX', KEYS[2], tonumber(idx)) end
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
local m = cjson.encode({d = ARGV[1], j = head, s = tonumber(ARGV[2])})
local len = redis.call('RPUSH', KEYS[2], m)
redis.call('HSET', KEYS[3], ARGV[1], len - 1)
redis.call('SPUBLISH', ARGV[5], cjson.encode({n = ARGV[3], k = 'm', c = ARGV[4], m = m}))
return m
"#;

/// KEYS: seq, mem, memcur, slot. ARGV: device, node, channel, bus. Returns the ended membership
/// (JSON), or false when the device was not a recipient.
pub(crate) const REMOVE_RECIPIENT: &str = r#"
local idx = redis.call('HGET', KEYS[3], ARGV[1])
if not idx then return false end
local m = cjson.decode(redis.call('LINDEX', KEYS[2], tonumber(idx)))
m.l = tonumber(redis.call('GET', KEYS[1]) or '0')
local json = cjson.encode(m)
redis.call('LSET', KEYS[2], tonumber(idx), json)
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('SPUBLISH', ARGV[4], cjson.encode({n = ARGV[2], k = 'm', c = ARGV[3], m = json}))
return json
"#;

/// KEYS: ev, slot. ARGV: after, device, limit, base. Returns the entries (as XRANGE does) of retained
/// events after `after` that the device sent no receipt for.
pub(crate) const UNACKNOWLEDGED: &str = r#"
local out = {}
local limit = tonumber(ARGV[3])
local start = (tonumber(ARGV[1]) + 1) .. '-0'
while #out < limit do
  local page = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 256)
  if #page == 0 then break end
  for _, e in ipairs(page) do
    local id = string.match(e[1], '^(%d+)')
    if redis.call('SISMEMBER', ARGV[4] .. ':ra:' .. id, ARGV[2]) == 0 then
      table.insert(out, e)
      if #out >= limit then break end
    end
  end
  start = (entry_id(page[#page][1]) + 1) .. '-0'
end
return out
"#;

/// KEYS: devs, dev, slot. ARGV: after ('' for the start), limit (-1: all). Returns device names and
/// records, interleaved.
pub(crate) const DEVICES_PAGE: &str = r#"
local from = '-'
if ARGV[1] ~= '' then from = '(' .. ARGV[1] end
local names = redis.call('ZRANGEBYLEX', KEYS[1], from, '+', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, name in ipairs(names) do
  local raw = redis.call('HGET', KEYS[2], name)
  if raw then table.insert(out, name); table.insert(out, raw) end
end
return out
"#;

/// One page of a channel's events with what a reader needs beside them, read at one instant.
/// KEYS: seq, ev, slot. ARGV: start (the entry id to read from, `ID-0`), limit. Returns
/// `{head, first, page}`: the last id, the oldest retained entry (as `XRANGE` gives it, none when
/// empty) and the entries from `start` on.
pub(crate) const READ: &str = r#"
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
local page = redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))
return {head, first, page}
"#;

/// Sets one node's count of open streams for devices of one channel, and keeps the channel's
/// cluster-wide totals with them: a device whose total goes from 0 to more is online, back to 0
/// offline; each such change gets the channel's next presence `seq`, joins the presence log and
/// is published, once for the whole cluster since the script runs alone.
/// KEYS: mine (this node's counts), all (the totals), pseq, plog, slot. ARGV: node, channel, bus,
/// replace ('1': devices of `mine` not listed go to 0; with no pairs, the node's whole share of
/// the channel goes, as a sweep of a dead node does), history (changes kept in `plog`), then
/// device, count pairs. Returns how many devices `mine` still holds.
pub(crate) const PRESENCE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function change(device, online)
  local seq = redis.call('INCR', KEYS[3])
  redis.call('XADD', KEYS[4], 'MAXLEN', ARGV[5], seq .. '-0', 'd', device, 'o', online, 't', now)
  redis.call('SPUBLISH', ARGV[3], cjson.encode({n = ARGV[1], k = 'p', c = ARGV[2], q = seq,
    d = device, o = online, t = now}))
end
local function set(device, count)
  local old = tonumber(redis.call('HGET', KEYS[1], device) or '0')
  if count == old then return end
  if count > 0 then redis.call('HSET', KEYS[1], device, count) else redis.call('HDEL', KEYS[1], device) end
  local total = redis.call('HINCRBY', KEYS[2], device, count - old)
  local before = total - (count - old)
  if total <= 0 then redis.call('HDEL', KEYS[2], device) end
  if before <= 0 and total > 0 then change(device, '1') end
  if before > 0 and total <= 0 then change(device, '0') end
end
local listed = {}
for i = 6, #ARGV, 2 do
  listed[ARGV[i]] = true
  set(ARGV[i], tonumber(ARGV[i + 1]))
end
if ARGV[4] == '1' then
  for _, device in ipairs(redis.call('HKEYS', KEYS[1])) do
    if not listed[device] then set(device, 0) end
  end
end
return redis.call('HLEN', KEYS[1])
"#;

/// A node's heartbeat on the set of nodes. KEYS: nodes. ARGV: node, now_ms, expiry_ms, known
/// ('1': registered before). Returns 1, registering nothing, when a known node's registration
/// lapsed (expired, or swept away): its share of presence may have been cleared by another
/// node, so it must come back under a new name and write it again. Else registers the node
/// until `expiry_ms` and returns 0.
pub(crate) const NODE_BEAT: &str = r#"
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
if ARGV[4] == '1' and (not old or tonumber(old) < tonumber(ARGV[2])) then return 1 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 0
"#;

/// A node's open streams per channel, replaced whole, living as long as its registration.
/// KEYS: conns. ARGV: ttl_ms, replace ('1': the counts below replace those held; '0': the
/// counts held are kept and only live longer), then channel, count pairs.
pub(crate) const NODE_CONNS: &str = r#"
if ARGV[2] == '1' then
  redis.call('DEL', KEYS[1])
  for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 0
"#;

/// A script with the shared helpers in front.
pub(crate) fn with_helpers(body: &str) -> String {
    format!("{DEVICE}\n{body}")
}
