#!/usr/bin/env bash
# Side-by-side benchmark of two MMS-sending services against ONE fake Plivo, in one run.
#
#   ./compare.sh [options] [B_CMD B_URL]
#
# A is always the Node/Fastify reference (node-ref/, Plivo SDK redirected to the fake).
# B is the command B_CMD (run with `bash -c`, in the caller's working directory) serving
# POST B_URL. Without B_CMD/B_URL, B is a second copy of the Node reference (self-test).
#
# Sequence: start fake Plivo -> start A and B -> one sanity send each -> warm-up ->
# rounds of A B A B ... (fake counters reset before every run, checked after) -> RSS ->
# per-round table, medians, ratios B/A. Everything started here is stopped on exit (by PID).
#
# B's environment: PLIVO_AUTH_ID PLIVO_AUTH_TOKEN PLIVO_SENDER_NUMBER (match the fake),
#   PLIVO_API_URL=http://127.0.0.1:FAKE_PORT/v1 (mms-gateway's name: base incl. /v1),
#   PLIVO_API_BASE_URL=http://127.0.0.1:FAKE_PORT (origin; what node-ref's preload reads),
#   HOST=127.0.0.1 PORT=B_PORT B_PORT, and rate limits set very high so they never bite:
#   RATE_LIMIT_MAX=1000000000 (the peer), RATE_LIMIT=100/minute RATE_LIMIT_PER_DESTINATION=100000/hour
#   (B; override with B_RATE_LIMIT / B_RATE_LIMIT_PER_DESTINATION), and LOAD_SPREAD=1 spreads the
#   load over 10,000 client addresses (X-Forwarded-For) and 1,000 destinations
#   (every load request goes to the same "to"). Make B_CMD `exec` the server so its PID is
#   the service's. Set LOAD_AUTHORIZATION (e.g. "Bearer k") if B wants an API key, and
#   LOAD_MEDIA_URL to name a media URL that B's checks accept (both services get it).
#
# Options:
#   --latency-ms N     fake Plivo response delay (default 0)
#   --jitter-ms N      +/- jitter on that delay (default 0)
#   --connections N    wrk connections (default 50)
#   --duration S       seconds per measured run (default 10)
#   --rounds R         A/B rounds (default 3)
#   --warmup S         unmeasured warm-up per service before round 1 (default 5, 0 = none)
#   --a-port P --b-port P --fake-port P   (defaults 3101 3102 8765)
#   --b-health URL     readiness URL for B (default: wait until B_URL's port accepts TCP)
#   --label-a L --label-b L               names in the output (default node-ref / B)
#   --no-pin           do not use taskset (default on 2+ CPUs: services on CPU 0,
#                      fake Plivo + wrk on CPU 1)
#   --quiet-wait S     before each measured run, wait up to S s (default 60, 0 = don't)
#                      for the machine to be quiet: other processes using <= --quiet-pct
#                      (default 15) % of a core over 1 s. Other sessions share this box.
#   --retry-noisy N    redo a run (at most N times, default 2) when other processes used
#                      more than 2 x --quiet-pct % of a core during it; redone rows go to
#                      noisy.jsonl, a run still noisy after N redos is kept and flagged
#   --node-log FILE    pino destination for the Node reference (default /dev/null)
#   --out DIR          results folder (default runs/<timestamp>-...)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib/common.sh
source "$HERE/lib/common.sh"

LATENCY=0; JITTER=0; CONNS=50; DURATION=10; ROUNDS=3; WARMUP=5
A_PORT=3101; B_PORT=3102; FAKE_PORT=8765
B_HEALTH=""; LABEL_A="node-ref"; LABEL_B=""; PIN=1; NODE_LOG=/dev/null; OUT=""
QUIET_WAIT=60; QUIET_PCT=15; RETRY_NOISY=2; LAST_IDLE_BUSY=0
B_CMD=""; B_URL=""
positional=()

while [ $# -gt 0 ]; do
  case "$1" in
    --latency-ms) LATENCY="$2"; shift 2 ;;
    --jitter-ms) JITTER="$2"; shift 2 ;;
    --connections|-c) CONNS="$2"; shift 2 ;;
    --duration|-d) DURATION="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --a-port) A_PORT="$2"; shift 2 ;;
    --b-port) B_PORT="$2"; shift 2 ;;
    --fake-port) FAKE_PORT="$2"; shift 2 ;;
    --b-health) B_HEALTH="$2"; shift 2 ;;
    --label-a) LABEL_A="$2"; shift 2 ;;
    --label-b) LABEL_B="$2"; shift 2 ;;
    --no-pin) PIN=0; shift ;;
    --quiet-wait) QUIET_WAIT="$2"; shift 2 ;;
    --quiet-pct) QUIET_PCT="$2"; shift 2 ;;
    --retry-noisy) RETRY_NOISY="$2"; shift 2 ;;
    --node-log) NODE_LOG="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    --) shift; positional+=("$@"); break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) positional+=("$1"); shift ;;
  esac
done
case "${#positional[@]}" in
  0) ;;
  2) B_CMD="${positional[0]}"; B_URL="${positional[1]}" ;;
  *) die "give both B_CMD and B_URL, or neither (self-test)" ;;
esac

for v in LATENCY JITTER CONNS DURATION ROUNDS WARMUP A_PORT B_PORT FAKE_PORT QUIET_WAIT QUIET_PCT RETRY_NOISY; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
(( ROUNDS >= 1 && ROUNDS <= 20 )) || die "--rounds must be 1..20"
(( DURATION >= 1 && DURATION <= 120 )) || die "--duration must be 1..120"
(( WARMUP <= 60 )) || die "--warmup must be 0..60"
(( QUIET_WAIT <= 600 )) || die "--quiet-wait must be 0..600"
(( RETRY_NOISY <= 5 )) || die "--retry-noisy must be 0..5"

AUTH_ID="MAFAKEAUTHID00000000"
AUTH_TOKEN="fake-auth-token"
SENDER="+14155550000"
FAKE_BASE="http://127.0.0.1:$FAKE_PORT"
A_URL="http://127.0.0.1:$A_PORT/api/mms/send"
SELF_TEST=0
if [ -z "$B_CMD" ]; then
  SELF_TEST=1
  B_URL="http://127.0.0.1:$B_PORT/api/mms/send"
  LABEL_B="${LABEL_B:-node-ref(B)}"
else
  LABEL_B="${LABEL_B:-B}"
  url_host_port "$B_URL" >/dev/null || die "B_URL must be http on 127.0.0.0/8 or localhost: $B_URL"
fi

SVC_CPUS=""; AUX_CPUS=""
if [ "$PIN" = 1 ] && command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  SVC_CPUS=0; AUX_CPUS=1
fi

if [ -z "$OUT" ]; then
  OUT="$HERE/runs/$(date +%Y%m%d-%H%M%S)-lat${LATENCY}-c${CONNS}"
fi
mkdir -p "$OUT"
ROWS="$OUT/rounds.jsonl"; : > "$ROWS"

# Long steps (load runs) run in the background and are waited for with `wait`, which a
# trapped signal interrupts at once; the handler stops the load run, the EXIT trap the rest.
LOAD_PID=""
on_signal() {
  log "interrupted: stopping everything this script started"
  if [ -n "$LOAD_PID" ]; then stop_tree "$LOAD_PID" 2; fi
  exit 130
}
trap 'stop_all' EXIT
trap on_signal INT TERM

# run_load OUTFILE [VAR=value ...] -- URL CONNS DURATION: load.sh in the background, JSON to OUTFILE
run_load() {
  local outfile="$1"; shift
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done; shift
  env "${envs[@]}" "$HERE/load.sh" "$@" 1 > "$outfile" &
  LOAD_PID=$!
  wait "$LOAD_PID" || true
  LOAD_PID=""
}

"$HERE/setup.sh" --quiet >&2 || die "setup.sh failed"

for p in "$FAKE_PORT" "$A_PORT"; do port_in_use "$p" && die "port $p is already in use"; done
if [ "$SELF_TEST" = 1 ]; then port_in_use "$B_PORT" && die "port $B_PORT is already in use"; fi
if [ -n "$B_CMD" ]; then
  read -r _bh _bp < <(url_host_port "$B_URL")
  port_in_use "$_bp" && die "B's port $_bp is already in use"
fi

log "results -> $OUT"
log "pinning: services cpu=${SVC_CPUS:-any}, fake+wrk cpu=${AUX_CPUS:-any}"

# ---- fake Plivo --------------------------------------------------------------------------
start_bg FAKE_PID "$OUT/fake.log" "$AUX_CPUS" "$HERE/.venv/bin/python" "$HERE/fake_plivo.py" \
  --port "$FAKE_PORT" --latency-ms "$LATENCY" --jitter-ms "$JITTER" \
  --auth-id "$AUTH_ID" --auth-token "$AUTH_TOKEN"
wait_http "$FAKE_BASE/_stats" "$FAKE_PID" 20 || die "fake Plivo did not start (see $OUT/fake.log)"
log "fake Plivo pid $FAKE_PID on $FAKE_BASE (latency ${LATENCY}ms jitter ${JITTER}ms)"

# ---- services ----------------------------------------------------------------------------
export PLIVO_AUTH_ID="$AUTH_ID" PLIVO_AUTH_TOKEN="$AUTH_TOKEN" PLIVO_SENDER_NUMBER="$SENDER"
export PLIVO_API_BASE_URL="$FAKE_BASE" PLIVO_API_URL="$FAKE_BASE/v1" HOST=127.0.0.1
# The peer limits per socket address only, so its limit is raised out of the way; B gets
# realistic limits and spread load (LOAD_SPREAD=1: many clients, many destinations).
export RATE_LIMIT_MAX=1000000000 RATE_LIMIT="${B_RATE_LIMIT:-100/minute}" RATE_LIMIT_PER_DESTINATION="${B_RATE_LIMIT_PER_DESTINATION:-100000/hour}"
export LOAD_SPREAD="${LOAD_SPREAD:-1}"
export NODE_ENV=production LOG_LEVEL=info PLIVO_LOCAL_QUIET=0

start_node() {  # VAR PORT LOGFILE
  start_bg "$1" "$3" "$SVC_CPUS" env PORT="$2" LOG_FILE="$NODE_LOG" \
    node -r "$HERE/node-ref/plivo-local.js" "$HERE/node-ref/src/app.js"
}

start_node A_PID "$A_PORT" "$OUT/a.out"
wait_http "http://127.0.0.1:$A_PORT/health" "$A_PID" 30 || die "node reference (A) did not start (see $OUT/a.out)"
log "A ($LABEL_A) pid $A_PID on $A_URL"

if [ "$SELF_TEST" = 1 ]; then
  start_node B_PID "$B_PORT" "$OUT/b.out"
  wait_http "http://127.0.0.1:$B_PORT/health" "$B_PID" 30 || die "node reference (B) did not start (see $OUT/b.out)"
else
  read -r B_HOST B_TCP_PORT < <(url_host_port "$B_URL")
  start_bg B_PID "$OUT/b.out" "$SVC_CPUS" env PORT="$B_TCP_PORT" B_PORT="$B_TCP_PORT" bash -c "$B_CMD"
  if [ -n "$B_HEALTH" ]; then
    wait_http "$B_HEALTH" "$B_PID" 60 || die "B did not become healthy at $B_HEALTH (see $OUT/b.out)"
  else
    wait_tcp "$B_HOST" "$B_TCP_PORT" "$B_PID" 60 || die "B did not open $B_HOST:$B_TCP_PORT (see $OUT/b.out)"
  fi
fi
log "B ($LABEL_B) pid $B_PID on $B_URL"

RSS_IDLE_A="$(rss_json "$A_PID")"; RSS_IDLE_B="$(rss_json "$B_PID")"

# ---- sanity: one send through each service must reach the fake ---------------------------
BODY="{\"to\": \"+14155550100\", \"media_urls\": [\"${LOAD_MEDIA_URL:-https://example.com/a.png}\"], \"text\": \"hello\"}"
sanity() {  # LABEL URL
  curl -fsS -o /dev/null -X POST "$FAKE_BASE/_reset"
  local code hdrs=(-H 'Content-Type: application/json')
  if [ -n "${LOAD_AUTHORIZATION:-}" ]; then hdrs+=(-H "Authorization: $LOAD_AUTHORIZATION"); fi
  code=$(curl -sS -o "$OUT/sanity-$1.json" -w '%{http_code}' --max-time 10 -X POST "$2" \
    "${hdrs[@]}" -d "$BODY") || code="curl-failed"
  local got
  got=$(curl -fsS "$FAKE_BASE/_stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["accepted"])')
  log "sanity $1: HTTP $code, fake accepted $got: $(head -c 200 "$OUT/sanity-$1.json" 2>/dev/null)"
  [[ "$code" == 2* && "$got" -ge 1 ]] || die "sanity send through $1 failed"
}
sanity A "$A_URL"
sanity B "$B_URL"

# ---- load --------------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
# machine-wide busy and steal jiffies (all CPUs): user+nice+system+irq+softirq+steal, steal
read_cpu() { awk '/^cpu /{ print $2 + $3 + $4 + $7 + $8 + $9, $9 }' /proc/stat; }
# wait_quiet: before a measured run, wait (at most QUIET_WAIT s) until the machine's CPU use
# over 1 s -- with our services idle, that is everyone else's -- is below QUIET_PCT % of a core.
wait_quiet() {
  local waited=0 b0 s0 b1 s1 busy
  while :; do
    read -r b0 s0 < <(read_cpu); sleep 1; read -r b1 s1 < <(read_cpu)
    busy=$(( (b1 - b0) * 100 / CLK_TCK ))
    LAST_IDLE_BUSY=$busy
    (( busy <= QUIET_PCT )) && return 0
    if (( waited >= QUIET_WAIT )); then
      log "machine still busy (${busy}% of a core used by others) after ${waited}s: measuring anyway"
      return 0
    fi
    (( waited == 0 )) && log "machine busy (${busy}% of a core used by others): waiting up to ${QUIET_WAIT}s"
    sleep 2; waited=$((waited + 3))
  done
}
measure_once() {  # ROUND SIDE LABEL URL PID ATTEMPT -> writes one JSON row to $OUT/.row.json
  local round="$1" side="$2" label="$3" url="$4" pid="$5" attempt="$6"
  local res t0 t1 f0 f1 b0 b1 s0 s1 w0 w1 stats rss
  curl -fsS -o /dev/null -X POST "$FAKE_BASE/_reset"
  t0=$(cpu_ticks "$pid"); f0=$(cpu_ticks "$FAKE_PID")
  read -r b0 s0 < <(read_cpu); w0=$(date +%s%N)
  run_load "$OUT/.load.json" LOAD_CPUS="$AUX_CPUS" LOAD_RAW_OUT="$OUT/wrk-r$round-$side.txt" \
    -- "$url" "$CONNS" "$DURATION"
  res="$(cat "$OUT/.load.json")"
  w1=$(date +%s%N); read -r b1 s1 < <(read_cpu)
  t1=$(cpu_ticks "$pid"); f1=$(cpu_ticks "$FAKE_PID")
  stats=$(curl -fsS "$FAKE_BASE/_stats")
  rss="$(rss_json "$pid")"
  python3 - "$round" "$side" "$label" "$res" "$stats" "$rss" "$((t1 - t0))" "$((f1 - f0))" "$CLK_TCK" \
    "$((w1 - w0))" "$((b1 - b0))" "$((s1 - s0))" "$LAST_IDLE_BUSY" "$attempt" <<'PY' > "$OUT/.row.json"
import json, sys
rnd, side, label, res, stats, rss, dt, df, hz, wall_ns, dbusy, dsteal, pre, attempt = sys.argv[1:15]
r = json.loads(res) if res.strip() else {"rps": 0, "failed": "no output"}
s = json.loads(stats)
wall = int(wall_ns) / 1e9 or 1.0
pct = lambda ticks: round(100.0 * int(ticks) / int(hz) / wall, 1)   # % of one core
svc, fake, busy = pct(dt), pct(df), pct(dbusy)
wrk = round(100.0 * (r.get("wrk_cpu_s") or 0) / wall, 1)
r.update({"round": int(rnd), "side": side, "label": label, "attempt": int(attempt),
          "fake_accepted": s["accepted"], "fake_requests": s["requests"],
          "fake_max_in_flight": s["max_in_flight"],
          "svc_cpu_pct": svc, "fake_cpu_pct": fake, "wrk_cpu_pct": wrk,
          # service CPU time per completed request (its efficiency, whatever the bottleneck)
          "svc_cpu_ms_per_req": round(1000.0 * int(dt) / int(hz) / r["requests"], 3)
                                if r.get("requests") else None,
          "machine_busy_pct": busy, "steal_pct": pct(dsteal),
          # CPU used on this machine by anything but the service, the fake and wrk
          # (other sessions' jobs, the hypervisor's steal, this script's own helpers)
          "other_cpu_pct": round(max(0.0, busy - svc - fake - wrk), 1),
          "pre_run_other_cpu_pct": int(pre),
          "rss": json.loads(rss)})
print(json.dumps(r))
PY
}

print_row() {
  python3 -c '
import json,sys
r=json.loads(sys.argv[1])
print("round %d %s %-12s rps=%9.1f p50=%8.2fms p99=%8.2fms non2xx=%s errors=%s fake_accepted=%s fake_max_inflight=%s cpu%%: svc=%s fake=%s wrk=%s other=%s rss=%.1fMiB%s" % (
  r["round"], r["side"], r["label"], r.get("rps",0), r.get("p50_ms") or 0, r.get("p99_ms") or 0,
  r.get("non2xx"), r.get("errors"), r["fake_accepted"], r["fake_max_in_flight"], r["svc_cpu_pct"],
  r["fake_cpu_pct"], r["wrk_cpu_pct"], r["other_cpu_pct"], r["rss"]["vmrss_kb"]/1024,
  "  (NOISY)" if r.get("noisy") else ""))' "$1"
}

# run_one: measure; if other processes used > 2 x QUIET_PCT % of a core during the run, log
# the row to noisy.jsonl and redo it (at most RETRY_NOISY times; the last try is kept, flagged).
run_one() {  # ROUND SIDE LABEL URL PID
  local attempt row other
  for ((attempt = 1; ; attempt++)); do
    wait_quiet
    measure_once "$@" "$attempt"
    kill -0 "$5" 2>/dev/null || die "$3 (pid $5) exited during round $1 (see $OUT/*.out)"
    kill -0 "$FAKE_PID" 2>/dev/null || die "fake Plivo exited during round $1 (see $OUT/fake.log)"
    row="$(cat "$OUT/.row.json")"
    other=$(python3 -c 'import json,sys; print(int(json.loads(sys.argv[1])["other_cpu_pct"]))' "$row")
    if (( other <= 2 * QUIET_PCT )); then break; fi
    if (( attempt > RETRY_NOISY )); then
      row=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["noisy"]=True; print(json.dumps(r))' "$row")
      break
    fi
    printf '%s\n' "$row" >> "$OUT/noisy.jsonl"
    log "round $1 $2: other processes used ${other}% of a core during the run: redoing it"
    sleep 1
  done
  printf '%s\n' "$row" >> "$ROWS"
  print_row "$row"
  sleep 1
}

if (( WARMUP > 0 )); then
  log "warm-up ${WARMUP}s each"
  run_load "$OUT/.warmup-a.json" LOAD_CPUS="$AUX_CPUS" -- "$A_URL" "$CONNS" "$WARMUP"
  run_load "$OUT/.warmup-b.json" LOAD_CPUS="$AUX_CPUS" -- "$B_URL" "$CONNS" "$WARMUP"
  cat "$OUT/.warmup-a.json" "$OUT/.warmup-b.json" > "$OUT/warmup.jsonl"
  rm -f "$OUT/.warmup-a.json" "$OUT/.warmup-b.json"
  sleep 1
fi

log "measuring: $ROUNDS rounds x (A, B), ${DURATION}s each, $CONNS connections, 1 wrk thread"
for ((r = 1; r <= ROUNDS; r++)); do
  run_one "$r" A "$LABEL_A" "$A_URL" "$A_PID"
  run_one "$r" B "$LABEL_B" "$B_URL" "$B_PID"
done

RSS_END_A="$(rss_json "$A_PID")"; RSS_END_B="$(rss_json "$B_PID")"
rm -f "$OUT/.load.json" "$OUT/.row.json"

python3 - "$ROWS" "$OUT/summary.json" "$LATENCY" "$JITTER" "$CONNS" "$DURATION" "$ROUNDS" \
  "$LABEL_A" "$LABEL_B" "$A_URL" "$B_URL" "$RSS_IDLE_A" "$RSS_IDLE_B" "$RSS_END_A" "$RSS_END_B" \
  "${SVC_CPUS:-any}" "${AUX_CPUS:-any}" <<'PY'
import json, os, statistics, sys
(rows_f, out_f, lat, jit, conns, dur, rounds, la, lb, ua, ub,
 ria, rib, rea, reb, svc_cpu, aux_cpu) = sys.argv[1:18]
rows = [json.loads(l) for l in open(rows_f) if l.strip()]
noisy_f = os.path.join(os.path.dirname(rows_f), "noisy.jsonl")
redone = [json.loads(l) for l in open(noisy_f) if l.strip()] if os.path.exists(noisy_f) else []
def side(s):
    rs = [r for r in rows if r["side"] == s]
    def med(k):
        v = [r[k] for r in rs if r.get(k) is not None]
        return round(statistics.median(v), 3) if v else None
    return {"rps_rounds": [r.get("rps") for r in rs], "p99_rounds": [r.get("p99_ms") for r in rs],
            "median_rps": med("rps"), "median_p50_ms": med("p50_ms"), "median_p99_ms": med("p99_ms"),
            "non2xx_total": sum(r.get("non2xx") or 0 for r in rs),
            "errors_total": sum(r.get("errors") or 0 for r in rs),
            "fake_accepted_total": sum(r.get("fake_accepted") or 0 for r in rs),
            "median_svc_cpu_pct": med("svc_cpu_pct"), "median_fake_cpu_pct": med("fake_cpu_pct"),
            "median_wrk_cpu_pct": med("wrk_cpu_pct"),
            "median_svc_cpu_ms_per_req": med("svc_cpu_ms_per_req"), "max_other_cpu_pct": max(
                [r.get("other_cpu_pct") or 0 for r in rs], default=0),
            "noisy_runs_kept": sum(1 for r in rs if r.get("noisy")),
            "runs_redone": sum(1 for r in redone if r.get("side") == s)}
A, B = side("A"), side("B")
ratio = lambda b, a: round(b / a, 3) if a and b is not None else None
rssA_i, rssB_i, rssA_e, rssB_e = map(json.loads, (ria, rib, rea, reb))
A.update(label=la, url=ua, rss_idle=rssA_i, rss_after_load=rssA_e)
B.update(label=lb, url=ub, rss_idle=rssB_i, rss_after_load=rssB_e)
summary = {"latency_ms": int(lat), "jitter_ms": int(jit), "connections": int(conns),
           "duration_s": int(dur), "rounds": int(rounds), "wrk_threads": 1,
           "pin": {"services_cpu": svc_cpu, "fake_and_wrk_cpu": aux_cpu},
           "A": A, "B": B,
           "ratio_B_over_A": {"rps": ratio(B["median_rps"], A["median_rps"]),
                              "p99": ratio(B["median_p99_ms"], A["median_p99_ms"]),
                              "cpu_per_req": ratio(B["median_svc_cpu_ms_per_req"], A["median_svc_cpu_ms_per_req"]),
                              "rss": ratio(rssB_e["tree_rss_kb"], rssA_e["tree_rss_kb"])}}
json.dump(summary, open(out_f, "w"), indent=2)
mib = lambda kb: kb / 1024.0
print()
print("== summary: fake latency %sms (+/-%sms), %s connections, %ss x %s rounds, wrk 1 thread ==" % (lat, jit, conns, dur, rounds))
for k, s in (("A", A), ("B", B)):
    print("%s %-12s median rps=%9.1f  median p50=%8.2fms  median p99=%8.2fms  rps/round=%s  p99/round=%s" % (
        k, s["label"], s["median_rps"] or 0, s["median_p50_ms"] or 0, s["median_p99_ms"] or 0,
        s["rps_rounds"], s["p99_rounds"]))
    print("   non2xx=%d errors=%d fake_accepted=%d  cpu%%: svc~%s fake~%s wrk~%s other<=%s  svc cpu/req~%sms  RSS idle=%.1fMiB after-load=%.1fMiB (peak %.1fMiB, tree %.1fMiB)" % (
        s["non2xx_total"], s["errors_total"], s["fake_accepted_total"], s["median_svc_cpu_pct"],
        s["median_fake_cpu_pct"], s["median_wrk_cpu_pct"], s["max_other_cpu_pct"],
        s["median_svc_cpu_ms_per_req"],
        mib(s["rss_idle"]["vmrss_kb"]), mib(s["rss_after_load"]["vmrss_kb"]),
        mib(s["rss_after_load"]["vmhwm_kb"]), mib(s["rss_after_load"]["tree_rss_kb"])))
r = summary["ratio_B_over_A"]
print("ratio B/A: rps=%s  p99=%s  cpu/req=%s  rss=%s" % (r["rps"], r["p99"], r["cpu_per_req"], r["rss"]))
for k, s in (("A", A), ("B", B)):
    if (s["median_fake_cpu_pct"] or 0) > 80:
        print("WARNING: fake Plivo used %s%% of a CPU during %s's runs: it may be the bottleneck "
              "(numbers for %s are then a lower bound)" % (s["median_fake_cpu_pct"], k, k))
    if s["runs_redone"]:
        print("note: %d of %s's runs were redone because other processes were busy (noisy.jsonl)" % (s["runs_redone"], k))
    if s["noisy_runs_kept"]:
        print("WARNING: %d of %s's kept runs are still flagged noisy" % (s["noisy_runs_kept"], k))
    if (s["max_other_cpu_pct"] or 0) > 10:
        print("WARNING: other processes used up to %s%% of a CPU during %s's runs: the machine "
              "was not quiet, expect noise (see other_cpu_pct in rounds.jsonl)" % (s["max_other_cpu_pct"], k))
    if s["non2xx_total"] or s["errors_total"]:
        print("WARNING: %s had %d non-2xx responses and %d socket errors" % (k, s["non2xx_total"], s["errors_total"]))
print("SUMMARY_JSON " + json.dumps(summary))
PY
log "results in $OUT (rounds.jsonl, summary.json, wrk-*.txt, logs)"
