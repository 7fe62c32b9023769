-- The training traffic of the profile-guided sidecar build (scripts/sidecar-pgo.sh), run by wrk
-- against deploy/examples/routes-policy.yaml. It is not the benchmark's (benches/proxy/mix.lua:
-- one origin, one path, two bare requests): browser-shaped requests over the policy's routes,
-- allowed and refused, with and without an Origin, so that the profile lays out what a sidecar
-- serves rather than what the benchmark measures. `done` prints one line for the script, with
-- the share of answers that should not be 2xx (refused preflights and the Reject route's 403s).
local requests = {}
local refused = 0
local counter = 0

local browser = {
  ["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
  ["Accept-Language"] = "en-GB,en;q=0.9,fr;q=0.8",
  ["Accept-Encoding"] = "gzip, deflate, br, zstd",
  ["sec-ch-ua"] = "\"Chromium\";v=\"131\", \"Not_A Brand\";v=\"24\"",
  ["sec-ch-ua-mobile"] = "?0",
  ["sec-ch-ua-platform"] = "\"Linux\"",
}

-- A request from a page on `origin` (nil: no Origin, as for a navigation or same-origin GET).
local function from(origin, method, path, extra, body)
  local headers = {}
  for name, value in pairs(browser) do headers[name] = value end
  if origin then
    headers["Origin"] = origin
    headers["Referer"] = origin .. "/"
    headers["Sec-Fetch-Mode"] = "cors"
    headers["Sec-Fetch-Site"] = "cross-site"
  else
    headers["Sec-Fetch-Mode"] = "navigate"
    headers["Sec-Fetch-Site"] = "none"
  end
  for name, value in pairs(extra or {}) do headers[name] = value end
  return wrk.format(method, path, headers, body)
end

local function add(request, status_is_2xx)
  requests[#requests + 1] = request
  if not status_is_2xx then refused = refused + 1 end
end

local function build()
  requests, refused = {}, 0
  local shop, admin = "https://shop.example.com", "https://admin.example.com"
  local partner, beta = "https://acme.partners.example.net", "https://beta.shop.example.com"
  local json = { ["Accept"] = "application/json", ["Cookie"] = "session=5f2c9a; theme=dark" }
  local order = '{"sku":"compass-7","quantity":2,"note":"gift wrap"}'
  -- /api: simple and credentialed requests, their preflights.
  for page = 1, 4 do
    add(from(shop, "GET", "/api/items?page=" .. page .. "&sort=name", json), true)
  end
  add(from(shop, "POST", "/api/orders", {
    ["Content-Type"] = "application/json", ["Cookie"] = json["Cookie"],
  }, order), true)
  add(from(shop, "OPTIONS", "/api/orders/42", {
    ["Access-Control-Request-Method"] = "PUT",
    ["Access-Control-Request-Headers"] = "content-type",
  }), true)
  add(from(shop, "OPTIONS", "/api/orders/42", {
    ["Access-Control-Request-Method"] = "DELETE",
  }), true)
  -- /api from an origin the policy does not list: forwarded without CORS headers; its
  -- preflight is refused.
  add(from("https://evil.example", "GET", "/api/items", json), true)
  add(from("https://evil.example", "OPTIONS", "/api/orders", {
    ["Access-Control-Request-Method"] = "POST",
    ["Access-Control-Request-Headers"] = "content-type,x-csrf-token",
  }), false)
  -- /api/admin: another origin; preflights from other origins go to the upstream (Forward).
  add(from(admin, "GET", "/api/admin/users/7", json), true)
  add(from(admin, "OPTIONS", "/api/admin/users/7", {
    ["Access-Control-Request-Method"] = "POST",
    ["Access-Control-Request-Headers"] = "content-type",
  }), true)
  add(from(shop, "OPTIONS", "/api/admin/users/7", {
    ["Access-Control-Request-Method"] = "DELETE",
  }), true)
  -- /webhooks: origins matched by regex; others refused with 403 (Reject).
  add(from(partner, "POST", "/webhooks/payments", { ["Content-Type"] = "text/plain" }, "ok"), true)
  add(from(shop, "GET", "/webhooks/payments", json), false)
  -- /beta: DryRun, with Private Network Access.
  add(from(beta, "GET", "/beta/catalogue", json), true)
  add(from(beta, "OPTIONS", "/beta/catalogue", {
    ["Access-Control-Request-Method"] = "GET",
    ["Access-Control-Request-Private-Network"] = "true",
  }), true)
  -- No Origin: a page load, an asset, a same-origin fetch.
  add(from(nil, "GET", "/", { ["Accept"] = "text/html,application/xhtml+xml" }), true)
  add(from(nil, "GET", "/static/app.3f9c2b.js", { ["Accept"] = "*/*" }), true)
  -- (No HEAD: wrk would wait for the body its Content-Length announces.)
  add(from(nil, "GET", "/healthz", {}), true)
end

-- wrk.format needs the Host that wrk sets before init(); done() runs in wrk's main state, where
-- init() never ran, so the list is built there too, for its share of refusals only.
build()

function init(args)
  build()
end

function request()
  counter = counter + 1
  return requests[(counter % #requests) + 1]
end

function done(summary, latency, requests_done)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout
  io.write(string.format("RESULT requests=%d errors=%d non2xx=%d expected_non2xx_share=%.4f\n",
    summary.requests, errors, summary.errors.status, refused / #requests))
end
