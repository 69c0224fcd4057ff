-- wrk script: POST pre-signed, unique Plivo callbacks (one line of CALLBACKS_FILE each:
-- "<V3 signature>\t<nonce>\t<form body>"), each thread starting at its own offset so no
-- request is a replay of another.
local path = os.getenv("CALLBACKS_FILE")
local lines = {}
for line in io.lines(path) do
  local sig, nonce, body = line:match("^([^\t]*)\t([^\t]*)\t(.*)$")
  lines[#lines + 1] = {sig, nonce, body}
end

local counter = 0
local threads = {}

function setup(thread)
  thread:set("offset", #threads)
  table.insert(threads, thread)
end

function init(args)
  counter = tonumber(offset) * 1000003
end

function request()
  counter = counter + 1
  local item = lines[(counter % #lines) + 1]
  local headers = {
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["X-Plivo-Signature-V3"] = item[1],
    ["X-Plivo-Signature-V3-Nonce"] = item[2],
  }
  return wrk.format("POST", nil, headers, item[3])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"p50_us":%.1f,"p99_us":%.1f,"status":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"timeout":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect, e.read, e.write, e.timeout))
end
