-- The requests of a wrk run, all from an origin the policy lists. MIX (environment) chooses:
-- "mix" (default): three allowed simple GETs for each allowed preflight; "get": allowed simple
-- GETs only; "preflight": allowed preflights only. `done` prints one line for run.sh.
local requests = {}
local counter = 0

function init(args)
  local origin = "https://app.example.com"
  local get = wrk.format("GET", "/api/items", { ["Origin"] = origin, ["Accept"] = "application/json" })
  local preflight = wrk.format("OPTIONS", "/api/items", {
    ["Origin"] = origin,
    ["Access-Control-Request-Method"] = "PUT",
    ["Access-Control-Request-Headers"] = "content-type,x-requested-with",
  })
  local mix = os.getenv("MIX") or "mix"
  if mix == "get" then
    requests = { get }
  elseif mix == "preflight" then
    requests = { preflight }
  else
    requests = { get, get, get, preflight }
  end
end

function request()
  counter = counter + 1
  return requests[(counter % #requests) + 1]
end

function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format("RESULT rps=%.0f p50_us=%d p99_us=%d requests=%d errors=%d non2xx=%d\n",
    summary.requests / seconds, latency:percentile(50), latency:percentile(99),
    summary.requests, errors, summary.errors.status))
end
