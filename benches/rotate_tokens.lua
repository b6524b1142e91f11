-- wrk script for benches/load.sh: every request carries the ID token of one of the
-- users in $TOKENS_FILE (one per line), rotating through all of them, so a run
-- exercises as many distinct callers as there are tokens. Requests are formatted
-- once in init(), so wrk spends no time building them during the run.
--
-- done() prints one line "RESULT {json}" with throughput, errors and the latency
-- distribution (milliseconds) for load.sh to collect.
--
-- Arguments: the path (default /api/orders); for a forward-auth check also the
-- checked method and URI, sent as X-Original-Method / X-Original-URI.

local reqs = {}
local n = 0
local i = 0

function init(args)
  local path = args[1] or "/api/orders"
  -- A forward-auth check (args: path, method, uri) names the request it is about.
  local checked_method, checked_uri = args[2], args[3]
  local file = os.getenv("TOKENS_FILE")
  local f = assert(io.open(file, "r"), "cannot open TOKENS_FILE")
  for line in f:lines() do
    if #line > 0 then
      n = n + 1
      local headers = { ["Authorization"] = "Bearer " .. line }
      if checked_uri then
        headers["X-Original-Method"] = checked_method
        headers["X-Original-URI"] = checked_uri
      end
      reqs[n] = wrk.format("GET", path, headers)
    end
  end
  f:close()
  assert(n > 0, "no tokens in TOKENS_FILE")
  -- Threads start at different places in the rotation.
  i = math.random(n) - 1
end

function request()
  i = i % n + 1
  return reqs[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  local pct = {}
  for _, p in ipairs({ 50, 75, 90, 95, 99, 99.5, 99.9, 99.99 }) do
    pct[#pct + 1] = string.format('"%s": %.4f', tostring(p), latency:percentile(p) / 1000)
  end
  -- A finer curve for the chart: 0.5% steps to 99%, then the tail.
  local curve = {}
  local p = 0.5
  while p < 99 do
    curve[#curve + 1] = string.format("[%.2f, %.4f]", p, latency:percentile(p) / 1000)
    p = p + 0.5
  end
  for _, q in ipairs({ 99, 99.25, 99.5, 99.75, 99.9, 99.95, 99.99 }) do
    curve[#curve + 1] = string.format("[%.2f, %.4f]", q, latency:percentile(q) / 1000)
  end
  io.write(string.format(
    'RESULT {"requests": %d, "seconds": %.3f, "rps": %.1f, "non2xx": %d, "socket_errors": %d, ' ..
    '"mean_ms": %.4f, "max_ms": %.4f, "pct": {%s}, "curve": [%s]}\n',
    summary.requests, secs, summary.requests / secs, e.status, e.connect + e.read + e.write + e.timeout,
    latency.mean / 1000, latency.max / 1000, table.concat(pct, ", "), table.concat(curve, ", ")))
end
