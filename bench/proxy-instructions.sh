#!/usr/bin/env bash
# User-space instructions per proxied request: Gantry vs nginx vs haproxy,
# under valgrind's callgrind, in the same run, over HTTP/1.1 and h2c. Unlike req/s on a shared 2-core
# machine (±15 % between rounds), the count barely moves between runs, so it
# shows what a change to the request path costs or saves.
#
# One backend (nginx answering "hello"), one proxy at a time under
# callgrind (Gantry: `gantry proxy`; nginx: one worker, no master, the
# same keep-alive upstream as bench/proxy.sh; haproxy: one thread,
# `http-reuse always`). For each protocol: a warm-up, the counters zeroed,
# exactly N requests (HTTP/1.1 keep-alive: `h2load --h1`; h2c with prior
# knowledge: `h2load -m H2_STREAMS`), the counters dumped. Prints
# instructions per request and the ratios.
#
# Env: N=20000 requests, CONNS=8, H2_STREAMS=10, PORT_BASE=19100,
#      SKIP_BUILD=1, GANTRY_BIN=path, KEEP_TMP=1.
set -euo pipefail

N=${N:-20000}
CONNS=${CONNS:-8}
H2_STREAMS=${H2_STREAMS:-10}
PORT_BASE=${PORT_BASE:-19100}
BACKEND_PORT=$PORT_BASE
GANTRY_PORT=$((PORT_BASE + 1))
NGINX_PORT=$((PORT_BASE + 2))
NGINX_H2_PORT=$((PORT_BASE + 3)) # nginx 1.22: h2c only on a `listen ... http2` port
HAPROXY_PORT=$((PORT_BASE + 4))

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf '[bench] %s\n' "$*" >&2; }

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
need_tools nginx:nginx haproxy:haproxy valgrind:valgrind h2load:nghttp2-client curl:curl

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
GANTRY=${GANTRY_BIN:-$TARGET_DIR/release/gantry}
if [ "${SKIP_BUILD:-0}" != 1 ] && [ -z "${GANTRY_BIN:-}" ]; then
    log "building gantry (release)"
    (cd "$ROOT" && cargo build --release --bin gantry)
fi
[ -x "$GANTRY" ] || { log "no gantry binary at $GANTRY"; exit 1; }

TMP=$(mktemp -d /tmp/gantry-bench-ins.XXXXXX)
chmod 755 "$TMP"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ "${KEEP_TMP:-0}" = 1 ] || rm -rf "$TMP"
}
trap cleanup EXIT

nginx_conf() { # dir port extra-http-lines
    mkdir -p "$1"
    cat >"$1/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; pid $1/nginx.pid;
error_log $1/error.log warn; user root;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $1/body; proxy_temp_path $1/proxy; fastcgi_temp_path $1/f;
  uwsgi_temp_path $1/u; scgi_temp_path $1/s;
  keepalive_requests 1000000; keepalive_timeout 120s;
  $3
}
EOF
}

wait_port() {
    for _ in $(seq 200); do
        curl -fsS -o /dev/null "http://127.0.0.1:$1/" 2>/dev/null && return 0
        sleep 0.2
    done
    log "nothing answers on port $1"
    return 1
}

# Starts "${@:2}" under callgrind in the background, its profile in $1/cg.*
# and its output in $1/stdout and $1/stderr; sets CG_PID (stopped at exit).
under_callgrind() {
    local dir=$1
    shift
    valgrind --tool=callgrind --callgrind-out-file="$dir/cg" "$@" >"$dir/stdout" 2>"$dir/stderr" &
    CG_PID=$!
    PIDS+=("$CG_PID")
}

# Runs N requests of protocol $4 (h1 or h2c) against port $1 with
# callgrind's counters zeroed first; the callgrind process is $2, its output
# files $3.<dump>; $5 is this dump's number (1 for the first measure of
# a process, 2 for its second). Prints Ir per request.
measure() {
    local port=$1 pid=$2 out=$3 proto=$4 dump=$5 args
    if [ "$proto" = h1 ]; then args=(--h1); else args=(-m "$H2_STREAMS"); fi
    h2load "${args[@]}" -n 2000 -c "$CONNS" -t 1 "http://127.0.0.1:$port/" >/dev/null
    callgrind_control -z "$pid" >/dev/null 2>&1
    h2load "${args[@]}" -n "$N" -c "$CONNS" -t 1 "http://127.0.0.1:$port/" >"$out.$proto.h2load"
    callgrind_control -d "$pid" >/dev/null 2>&1
    grep -q "$N succeeded" "$out.$proto.h2load" || { log "not all requests succeeded:"; cat "$out.$proto.h2load" >&2; return 1; }
    local ir
    ir=$(grep -h '^totals:' "$out.$dump" 2>/dev/null | awk '{s += $2} END {print s}')
    [ -n "$ir" ] || { log "no callgrind totals in $out.$dump"; return 1; }
    echo $((ir / N))
}

nginx_conf "$TMP/backend" "$BACKEND_PORT" \
    "server { listen 127.0.0.1:$BACKEND_PORT backlog=4096; location / { default_type text/plain; return 200 \"hello\\n\"; } }"
nginx -c "$TMP/backend/nginx.conf" &
PIDS+=($!)
wait_port "$BACKEND_PORT"

# Gantry.
mkdir -p "$TMP/gantry/state"
GANTRY_DATA_DIR=$TMP/gantry/data under_callgrind "$TMP/gantry" \
    "$GANTRY" proxy --listen "127.0.0.1:$GANTRY_PORT" --state-dir "$TMP/gantry/state" --access-log off
GPID=$CG_PID
for _ in $(seq 300); do [ -S "$TMP/gantry/state/admin.sock" ] && break; sleep 0.2; done
curl -fsS --unix-socket "$TMP/gantry/state/admin.sock" -X PUT -H 'content-type: application/json' \
    --data "{\"version\":1,\"routes\":[{\"id\":\"bench/prod\",\"hosts\":[\"*\"],\"sets\":[{\"name\":\"stable\",\"weight\":100,\"instances\":[\"127.0.0.1:$BACKEND_PORT\"]}]}]}" \
    http://admin/table >/dev/null
wait_port "$GANTRY_PORT"
log "gantry: $N requests under callgrind, HTTP/1.1 then h2c"
G1=$(measure "$GANTRY_PORT" "$GPID" "$TMP/gantry/cg" h1 1)
G2=$(measure "$GANTRY_PORT" "$GPID" "$TMP/gantry/cg" h2c 2)

# nginx as the proxy: one worker process, measured whole.
nginx_conf "$TMP/nginx" "$NGINX_PORT" \
    "upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 512; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$NGINX_PORT backlog=4096; listen 127.0.0.1:$NGINX_H2_PORT http2;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host \$host; } }"
under_callgrind "$TMP/nginx" nginx -c "$TMP/nginx/nginx.conf"
NPID=$CG_PID
wait_port "$NGINX_PORT"
log "nginx: $N requests under callgrind, HTTP/1.1 then h2c"
X1=$(measure "$NGINX_PORT" "$NPID" "$TMP/nginx/cg" h1 1)
X2=$(measure "$NGINX_H2_PORT" "$NPID" "$TMP/nginx/cg" h2c 2)

# haproxy: one thread; it takes h2c on the same port (the h2 preface).
mkdir -p "$TMP/haproxy"
cat >"$TMP/haproxy/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend f
  bind 127.0.0.1:$HAPROXY_PORT
  default_backend b
backend b
  server s1 127.0.0.1:$BACKEND_PORT
EOF
under_callgrind "$TMP/haproxy" haproxy -f "$TMP/haproxy/haproxy.cfg"
HPID=$CG_PID
wait_port "$HAPROXY_PORT"
log "haproxy: $N requests under callgrind, HTTP/1.1 then h2c"
H1=$(measure "$HAPROXY_PORT" "$HPID" "$TMP/haproxy/cg" h1 1)
H2=$(measure "$HAPROXY_PORT" "$HPID" "$TMP/haproxy/cg" h2c 2)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2fx", a / b}'; }
echo
echo "User-space instructions per request (callgrind; $N requests, $CONNS connections; h2c with $H2_STREAMS streams each)"
echo
echo "| proxy | HTTP/1.1 | h2c |"
echo "|---|---:|---:|"
echo "| gantry | $G1 | $G2 |"
echo "| nginx | $X1 | $X2 |"
echo "| haproxy | $H1 | $H2 |"
echo "| gantry/nginx | $(ratio "$G1" "$X1") | $(ratio "$G2" "$X2") |"
echo "| gantry/haproxy | $(ratio "$G1" "$H1") | $(ratio "$G2" "$H2") |"
