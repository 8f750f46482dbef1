#!/usr/bin/env bash
# Proxy benchmark: Gantry vs nginx vs haproxy in front of one fast backend,
# HTTP/1.1 keep-alive (wrk) and h2c prior knowledge (h2load), on loopback.
#
#   bash bench/proxy.sh
#
# Parameters (env vars, small defaults):
#   ROUNDS=3          rounds; the order of the proxies rotates every round
#   DURATION=10       seconds per wrk run
#   WARMUP=2          seconds of wrk warm-up before each proxy's runs
#   THREADS=2         wrk threads (and h2load threads)
#   CONNS=64          wrk connections
#   H2_REQUESTS=200000  h2load requests per run
#   H2_CONNS=32       h2load connections
#   H2_STREAMS=10     h2load max concurrent streams per connection
#   PORT_BASE=18400   ports PORT_BASE..PORT_BASE+5 are used (127.0.0.1 only)
#   PROXIES="gantry nginx haproxy"
#   SKIP_BUILD=1      use the existing target/release/gantry
#   KEEP_TMP=1        keep the temp dir (configs, raw outputs)
#   GANTRY_BIN=PATH   benchmark this gantry binary (implies no build)
#
# Everything (configs, pid files, logs, raw results) lives in a temp dir;
# no system config is touched; every process started here is stopped on exit.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
H2_REQUESTS=${H2_REQUESTS:-200000}
H2_CONNS=${H2_CONNS:-32}
H2_STREAMS=${H2_STREAMS:-10}
PORT_BASE=${PORT_BASE:-18400}
PROXIES=${PROXIES:-"gantry nginx haproxy"}
CORES=$(nproc)
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

BACKEND_PORT=$PORT_BASE
GANTRY_PORT=$((PORT_BASE + 1))
NGINX_PORT=$((PORT_BASE + 2))
NGINX_H2_PORT=$((PORT_BASE + 3)) # nginx 1.22: a `listen ... http2` port speaks only h2
HAPROXY_PORT=$((PORT_BASE + 4))

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf '[bench] %s\n' "$*" >&2; }

# --- 1. tools -------------------------------------------------------------
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
need_tools nginx:nginx haproxy:haproxy wrk:wrk h2load:nghttp2-client curl:curl
# Debian's postinst may start a system nginx/haproxy; we never use or touch it.

# --- 2. build ---------------------------------------------------------------
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
GANTRY=${GANTRY_BIN:-$TARGET_DIR/release/gantry}
if [[ " $PROXIES " == *" gantry "* ]]; then
    if [ "${SKIP_BUILD:-0}" != 1 ] && [ -z "${GANTRY_BIN:-}" ]; then
        log "building gantry (release)"
        (cd "$ROOT" && cargo build --release --bin gantry)
    fi
    [ -x "$GANTRY" ] || { log "no gantry binary at $GANTRY"; exit 1; }
fi

for p in $BACKEND_PORT $GANTRY_PORT $NGINX_PORT $NGINX_H2_PORT $HAPROXY_PORT; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        log "port $p is in use; set PORT_BASE"
        exit 1
    fi
done

# --- 3. temp dir, cleanup ---------------------------------------------------
TMP=$(mktemp -d /tmp/gantry-bench.XXXXXX)
chmod 755 "$TMP" # nginx workers may run as nobody
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]:-}"; do
        [ -n "$pid" ] || continue
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]:-}"; do
        [ -n "$pid" ] || continue
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    if [ "${KEEP_TMP:-0}" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() { # port
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    log "nothing listens on $1"
    return 1
}

# nginx: a master (the pid we keep) and workers. Temp paths in $TMP.
nginx_common() { # dir
    cat <<EOF
daemon off;
master_process on;
worker_processes $CORES;
pid $1/nginx.pid;
error_log $1/error.log warn;
$( [ "$(id -u)" -eq 0 ] && echo "user root;" )
events { worker_connections 4096; multi_accept on; }
EOF
}
nginx_http_common() { # dir
    cat <<EOF
    access_log off;
    client_body_temp_path $1/body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
EOF
}

# --- 4. backend: its own nginx, `return 200 "hello\n"` ----------------------
start_backend() {
    local d=$TMP/backend
    mkdir -p "$d"
    {
        nginx_common "$d"
        echo "http {"
        nginx_http_common "$d"
        cat <<EOF
    server {
        listen 127.0.0.1:$BACKEND_PORT backlog=4096;
        location / { default_type text/plain; return 200 "hello\n"; }
    }
}
EOF
    } >"$d/nginx.conf"
    nginx -p "$d" -c "$d/nginx.conf" >"$d/stdout" 2>&1 &
    PIDS+=($!)
    echo $! >"$d/master.pid"
    wait_port $BACKEND_PORT
}

start_gantry() {
    local d=$TMP/gantry
    mkdir -p "$d/state"
    GANTRY_DATA_DIR=$d/data "$GANTRY" proxy --listen 127.0.0.1:$GANTRY_PORT \
        --state-dir "$d/state" --access-log off >"$d/stdout" 2>"$d/stderr" &
    PIDS+=($!)
    echo $! >"$d/master.pid"
    wait_port $GANTRY_PORT
    for _ in $(seq 50); do [ -S "$d/state/admin.sock" ] && break; sleep 0.1; done
    cat >"$d/table.json" <<EOF
{"version":1,"routes":[{"id":"bench/prod","hosts":["*"],"sets":[{"name":"stable","weight":100,"instances":["127.0.0.1:$BACKEND_PORT"]}]}]}
EOF
    curl -fsS --unix-socket "$d/state/admin.sock" -X PUT \
        -H 'content-type: application/json' --data @"$d/table.json" http://x/table >/dev/null
}

start_nginx() {
    local d=$TMP/nginx
    mkdir -p "$d"
    {
        nginx_common "$d"
        echo "http {"
        nginx_http_common "$d"
        cat <<EOF
    upstream backend {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 512;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        listen 127.0.0.1:$NGINX_H2_PORT http2 backlog=4096;
        http2_max_concurrent_streams 128;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
        }
    }
}
EOF
    } >"$d/nginx.conf"
    nginx -p "$d" -c "$d/nginx.conf" >"$d/stdout" 2>&1 &
    PIDS+=($!)
    echo $! >"$d/master.pid"
    wait_port $NGINX_PORT
}

start_haproxy() {
    local d=$TMP/haproxy
    mkdir -p "$d"
    cat >"$d/haproxy.cfg" <<EOF
global
    nbthread $CORES
    maxconn 4096
    pidfile $d/haproxy.pid
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    option http-keep-alive
    http-reuse always
frontend fe
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend be
backend be
    server b1 127.0.0.1:$BACKEND_PORT maxconn 1000
EOF
    haproxy -db -f "$d/haproxy.cfg" >"$d/stdout" 2>&1 &
    PIDS+=($!)
    echo $! >"$d/master.pid"
    wait_port $HAPROXY_PORT
}

h1_port() { case $1 in gantry) echo $GANTRY_PORT ;; nginx) echo $NGINX_PORT ;; haproxy) echo $HAPROXY_PORT ;; esac; }
h2_port() { case $1 in gantry) echo $GANTRY_PORT ;; nginx) echo $NGINX_H2_PORT ;; haproxy) echo $HAPROXY_PORT ;; esac; }

# Sum of VmRSS (KiB) of a proxy's master and its children (nginx workers).
rss_kib() { # proxy
    local master pids p total=0 v
    master=$(cat "$TMP/$1/master.pid")
    pids="$master $(pgrep -P "$master" 2>/dev/null || true)"
    for p in $pids; do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
        total=$((total + ${v:-0}))
    done
    echo $total
}

# Samples rss_kib every 0.2 s until the file $2 exists; writes the peak to $3.
sample_peak() { # proxy stopfile outfile
    local peak=0 v
    while [ ! -e "$2" ]; do
        v=$(rss_kib "$1")
        [ "$v" -gt "$peak" ] && peak=$v
        sleep 0.2
    done
    echo "$peak" >"$3"
}

# wrk latency value → microseconds.
to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
        if (u == "us") f = 1; else if (u == "ms") f = 1000; else if (u == "s") f = 1000000; else if (u == "m") f = 60000000; else f = 1;
        printf "%.0f", n * f }'
}

# --- 5. one proxy, one round -------------------------------------------------
RESULTS=$TMP/results.tsv # round proxy metric value
: >"$RESULTS"

run_proxy() { # round proxy
    local r=$1 p=$2 d=$TMP/runs/$1-$2 port h2p
    mkdir -p "$d"
    port=$(h1_port "$p")
    h2p=$(h2_port "$p")

    # Warm-up (pools filled, caches hot); not measured.
    wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" "http://127.0.0.1:$port/" >/dev/null 2>&1 || true

    # HTTP/1.1 keep-alive.
    rm -f "$d/stop"
    sample_peak "$p" "$d/stop" "$d/peak_h1" &
    local sp=$!
    wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$port/" >"$d/wrk.txt" 2>&1 || true
    touch "$d/stop"
    wait $sp
    local rps p50 p99 errs non2xx
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$d/wrk.txt")
    p50=$(to_us "$(awk '$1 == "50%" {print $2}' "$d/wrk.txt")")
    p99=$(to_us "$(awk '$1 == "99%" {print $2}' "$d/wrk.txt")")
    errs=$(awk '/Socket errors/ {print}' "$d/wrk.txt")
    non2xx=$(awk '/Non-2xx/ {print $NF}' "$d/wrk.txt")
    [ -z "$errs$non2xx" ] || log "  $p h1: $errs non-2xx=${non2xx:-0}"
    printf '%s\t%s\th1_rps\t%s\n%s\t%s\th1_p50\t%s\n%s\t%s\th1_p99\t%s\n' \
        "$r" "$p" "${rps:-0}" "$r" "$p" "${p50:-0}" "$r" "$p" "${p99:-0}" >>"$RESULTS"

    # h2c, prior knowledge. Per-request times from --log-file give p50/p99.
    rm -f "$d/stop"
    sample_peak "$p" "$d/stop" "$d/peak_h2" &
    sp=$!
    h2load -n "$H2_REQUESTS" -c "$H2_CONNS" -m "$H2_STREAMS" -t "$THREADS" \
        --log-file="$d/h2.log" "http://127.0.0.1:$h2p/" >"$d/h2load.txt" 2>&1 || true
    touch "$d/stop"
    wait $sp
    local h2rps h2ok h2p50 h2p99 h2mean
    h2rps=$(awk '/^finished in/ {for (i = 1; i <= NF; i++) if ($(i) ~ /^req\/s/) print $(i-1)}' "$d/h2load.txt")
    h2ok=$(awk '/^requests:/ {for (i = 1; i <= NF; i++) if ($(i) ~ /^succeeded/) print $(i-1)}' "$d/h2load.txt")
    h2mean=$(awk '/^time for request:/ {print $6}' "$d/h2load.txt")
    if [ -s "$d/h2.log" ] && [ "${h2ok:-0}" -gt 0 ]; then
        # column 3 = microseconds from request start to end of response
        cut -f3 "$d/h2.log" | sort -n >"$d/h2.sorted"
        local n
        n=$(wc -l <"$d/h2.sorted")
        h2p50=$(sed -n "$(((n * 50 + 99) / 100))p" "$d/h2.sorted")
        h2p99=$(sed -n "$(((n * 99 + 99) / 100))p" "$d/h2.sorted")
        rm -f "$d/h2.log" "$d/h2.sorted"
    else
        log "  $p h2c: no successful request ($(grep -m1 -E 'failed|error' "$d/h2load.txt" || true))"
        h2rps=na h2p50=na h2p99=na
    fi
    [ "${h2ok:-0}" = "$H2_REQUESTS" ] || log "  $p h2c: only ${h2ok:-0}/$H2_REQUESTS succeeded"
    printf '%s\t%s\th2_rps\t%s\n%s\t%s\th2_p50\t%s\n%s\t%s\th2_p99\t%s\n' \
        "$r" "$p" "${h2rps:-na}" "$r" "$p" "${h2p50:-na}" "$r" "$p" "${h2p99:-na}" >>"$RESULTS"

    local peak
    peak=$(sort -n "$d/peak_h1" "$d/peak_h2" | tail -1)
    printf '%s\t%s\trss_peak\t%s\n' "$r" "$p" "$peak" >>"$RESULTS"
    log "  round $r $p: h1 ${rps} req/s p50 ${p50}us p99 ${p99}us | h2c ${h2rps} req/s (mean ${h2mean:-?}) p50 ${h2p50}us p99 ${h2p99}us | peak RSS ${peak} KiB"
}

# --- 6. go ------------------------------------------------------------------
log "machine: $CORES cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
log "nginx $(nginx -v 2>&1 | sed 's/.*\///'), haproxy $(haproxy -v | awk 'NR==1 {print $3}'), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'), $(h2load --version)"
start_backend
read -r -a PLIST <<<"$PROXIES"
for p in "${PLIST[@]}"; do "start_$p"; done
sleep 1

# Each proxy must answer 200 with the backend's body, over h1 and h2c.
for p in "${PLIST[@]}"; do
    body=$(curl -fsS "http://127.0.0.1:$(h1_port "$p")/")
    [ "$body" = "hello" ] || { log "$p h1 answered '$body'"; exit 1; }
    if curl --help all 2>/dev/null | grep -q http2-prior-knowledge; then
        body=$(curl -fsS --http2-prior-knowledge "http://127.0.0.1:$(h2_port "$p")/" || echo FAIL)
        [ "$body" = "hello" ] || log "$p h2c answered '$body' (its h2c numbers will be n/a)"
    fi
done
for p in "${PLIST[@]}"; do
    printf '0\t%s\trss_idle\t%s\n' "$p" "$(rss_kib "$p")" >>"$RESULTS"
done

n=${#PLIST[@]}
for r in $(seq 1 "$ROUNDS"); do
    order=()
    for i in $(seq 0 $((n - 1))); do order+=("${PLIST[$(((i + r - 1) % n))]}"); done
    log "round $r/$ROUNDS: ${order[*]}"
    for p in "${order[@]}"; do run_proxy "$r" "$p"; done
done

# --- 7. medians --------------------------------------------------------------
median() { # proxy metric
    awk -F'\t' -v p="$1" -v m="$2" '$2 == p && $3 == m && $4 != "na" {print $4}' "$RESULTS" |
        sort -g | awk '{v[NR] = $1} END {
            if (NR == 0) { print "na"; exit }
            if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
fmt_us() { [ "$1" = na ] && echo "n/a" || awk -v v="$1" 'BEGIN { printf "%.2f ms", v / 1000 }'; }
fmt_rps() { [ "$1" = na ] && echo "n/a" || awk -v v="$1" 'BEGIN { printf "%.0f", v }'; }
fmt_mib() { [ "$1" = na ] && echo "n/a" || awk -v v="$1" 'BEGIN { printf "%.1f MiB", v / 1024 }'; }
ratio() { { [ "$1" = na ] || [ "$2" = na ] || [ "$2" = 0 ]; } && echo "n/a" || awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }

declare -A M
for p in "${PLIST[@]}"; do
    for m in h1_rps h1_p50 h1_p99 h2_rps h2_p50 h2_p99 rss_idle rss_peak; do
        M[$p.$m]=$(median "$p" "$m")
    done
done

echo
echo "Medians of $ROUNDS rounds ($CORES cores; wrk -t$THREADS -c$CONNS -d${DURATION}s; h2load -n$H2_REQUESTS -c$H2_CONNS -m$H2_STREAMS -t$THREADS)"
echo
echo "| proxy | h1 req/s | h1 p50 | h1 p99 | h2c req/s | h2c p50 | h2c p99 | RSS idle | RSS peak |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for p in "${PLIST[@]}"; do
    echo "| $p | $(fmt_rps "${M[$p.h1_rps]}") | $(fmt_us "${M[$p.h1_p50]}") | $(fmt_us "${M[$p.h1_p99]}") | $(fmt_rps "${M[$p.h2_rps]}") | $(fmt_us "${M[$p.h2_p50]}") | $(fmt_us "${M[$p.h2_p99]}") | $(fmt_mib "${M[$p.rss_idle]}") | $(fmt_mib "${M[$p.rss_peak]}") |"
done
if [[ " ${PLIST[*]} " == *" gantry "* ]]; then
    echo
    echo "| ratio | h1 req/s | h1 p99 | h2c req/s | h2c p99 |"
    echo "|---|---:|---:|---:|---:|"
    for o in nginx haproxy; do
        [[ " ${PLIST[*]} " == *" $o "* ]] || continue
        echo "| gantry/$o | $(ratio "${M[gantry.h1_rps]}" "${M[$o.h1_rps]}") | $(ratio "${M[gantry.h1_p99]}" "${M[$o.h1_p99]}") | $(ratio "${M[gantry.h2_rps]}" "${M[$o.h2_rps]}") | $(ratio "${M[gantry.h2_p99]}" "${M[$o.h2_p99]}") |"
    done
    echo
    echo "(req/s ratio > 1 is better for gantry; p99 ratio < 1 is better for gantry)"
fi
if [ -n "${RESULTS_OUT:-}" ]; then cp "$RESULTS" "$RESULTS_OUT"; log "raw results: $RESULTS_OUT"; fi
exit 0
