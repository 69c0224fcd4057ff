-- wrk script of bulk.py's acceptance: respond-async sends, each to its own number with its
-- own text, all due at BULK_SEND_AT. After BULK_COUNT 202s wrk's one thread stops and
-- prints BULK_DONE: bulk.py takes the time then and interrupts wrk (which would otherwise
-- wait out its duration), and wrk prints its summary.
--   BULK_API_KEY   the caller's key (X-API-Key)
--   BULK_MEDIA_URL the one picture every send names
--   BULK_SEND_AT   ISO 8601 due time of every send
--   BULK_COUNT     how many 202s to wait for
-- A Python client (httpx) could not measure this: on the machine's other core it spent a
-- full core on 200-odd requests a second, far below what the service accepts.
local media = os.getenv("BULK_MEDIA_URL")
local send_at = os.getenv("BULK_SEND_AT")
local count = tonumber(os.getenv("BULK_COUNT"))
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Prefer"] = "respond-async"
wrk.headers["X-API-Key"] = os.getenv("BULK_API_KEY")

-- The connections still waiting when the BULK_COUNT-th 202 comes back add up to one send
-- each (at most 49) beyond BULK_COUNT.
local sent = 0
function request()
  local b = string.format(
    '{"to": "+1415%07d", "media_urls": ["%s"], "text": "bulk %d", "send_at": "%s"}',
    5550000 + sent % 10000, media, sent, send_at)
  sent = sent + 1
  return wrk.format(nil, nil, nil, b)
end

-- Anything but a 202 is a 4xx or 5xx here, counted in summary.errors.status.
local seen = 0
function response(status, headers, body)
  if status ~= 202 then
    return
  end
  seen = seen + 1
  if seen == count then
    io.write("BULK_DONE\n")
    io.flush()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"p50_us":%.1f,"p99_us":%.1f,"errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout + summary.errors.status))
end
