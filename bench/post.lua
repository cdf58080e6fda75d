-- wrk script of bench/run.py: POST one signed Bitbucket Cloud repo:push delivery, over and over.
-- The driver passes the payload file and its signature in the environment:
--   BENCH_BODY_FILE   path of the JSON body sent as is
--   BENCH_SIGNATURE   the X-Hub-Signature value (sha256=<hex>) computed by the driver
-- At the end one line "BENCH_RESULT {json}" carries the counts and latencies (microseconds).

local path = assert(os.getenv("BENCH_BODY_FILE"), "BENCH_BODY_FILE is not set")
local file = assert(io.open(path, "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["User-Agent"] = "Bitbucket-Webhooks/2.0"
wrk.headers["X-Event-Key"] = "repo:push"
wrk.headers["X-Hub-Signature"] = assert(os.getenv("BENCH_SIGNATURE"), "BENCH_SIGNATURE is not set")
wrk.headers["X-Request-UUID"] = "0b7d8c2e-6a52-4f0e-9a51-6f1f0c5b9e10"
wrk.headers["X-Hook-UUID"] = "5c1f3a4e-2b7d-4f3a-9d8e-1a2b3c4d5e6f"
wrk.headers["X-Attempt-Number"] = "1"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"connect_errors":%d,"read_errors":%d,"write_errors":%d,'
      .. '"status_errors":%d,"timeout_errors":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
