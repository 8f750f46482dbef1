#!/usr/bin/env bash
# User-space instructions per proxied request: Gantry vs nginx, under
# valgrind's callgrind, in the same run. Unlike req/s on a shared 2-core
# machine (±15 % between rounds), the count barely moves between runs, so it
# shows what a change to the request path costs or saves.
#
# One backend (nginx answering "hello"), one proxy at a time under
# callgrind (Gantry: `gantry proxy`; nginx: one worker, no master, the
# same keep-alive upstream as bench/proxy.sh), a warm-up, the counters
# zeroed, then exactly N HTTP/1.1 keep-alive requests (h2load --h1), the
# counters dumped. Prints instructions per request and the ratio.
#
# Env: N=20000 requests, CONNS=8, PORT_BASE=19100, SKIP_BUILD=1,
#      GANTRY_BIN=path, KEEP_TMP=1.
set -euo pipefail

N=${N:-20000}
CONNS=${CONNS:-8}
PORT_BASE=${PORT_BASE:-19100}
BACKEND_PORT=$PORT_BASE
GANTRY_PORT=$((PORT_BASE + 1))
NGINX_PORT=$((PORT_BASE + 2))

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf '[bench] %s\n' "$*" >&2; }

need_pkgs=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_pkgs+=(nginx)
command -v valgrind >/dev/null 2>&1 || need_pkgs+=(valgrind)
command -v h2load >/dev/null 2>&1 || need_pkgs+=(nghttp2-client)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    log "installing: ${need_pkgs[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y "${need_pkgs[@]}"
fi
export PATH="$PATH:/usr/sbin:/sbin"

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

# Runs N requests against $1 with callgrind's counters zeroed first; the
# callgrind process is $2, its output files $3.*; prints Ir per request.
measure() {
    local port=$1 pid=$2 out=$3
    h2load --h1 -n 2000 -c "$CONNS" -t 1 "http://127.0.0.1:$port/" >/dev/null
    callgrind_control -z "$pid" >/dev/null 2>&1
    h2load --h1 -n "$N" -c "$CONNS" -t 1 "http://127.0.0.1:$port/" >"$out.h2load"
    callgrind_control -d "$pid" >/dev/null 2>&1
    grep -q "$N succeeded" "$out.h2load" || { log "not all requests succeeded:"; cat "$out.h2load" >&2; return 1; }
    # The dump after zeroing: one file per dump (".1"), totals of all threads.
    local ir
    ir=$(grep -h '^totals:' "$out".*.1 "$out".1 2>/dev/null | awk '{s += $2} END {print s}')
    [ -n "$ir" ] || { log "no callgrind totals in $out.*"; return 1; }
    echo $((ir / N))
}

nginx_conf "$TMP/backend" "$BACKEND_PORT" \
    "server { listen 127.0.0.1:$BACKEND_PORT backlog=4096; location / { default_type text/plain; return 200 \"hello\\n\"; } }"
nginx -c "$TMP/backend/nginx.conf" &
PIDS+=($!)
wait_port "$BACKEND_PORT"

# Gantry.
mkdir -p "$TMP/gantry/state"
GANTRY_DATA_DIR=$TMP/gantry/data valgrind --tool=callgrind --callgrind-out-file="$TMP/gantry/cg" \
    "$GANTRY" proxy --listen "127.0.0.1:$GANTRY_PORT" --state-dir "$TMP/gantry/state" \
    --access-log off >"$TMP/gantry/stdout" 2>"$TMP/gantry/stderr" &
GPID=$!
PIDS+=($GPID)
for _ in $(seq 300); do [ -S "$TMP/gantry/state/admin.sock" ] && break; sleep 0.2; done
curl -fsS --unix-socket "$TMP/gantry/state/admin.sock" -X PUT -H 'content-type: application/json' \
    --data "{\"version\":1,\"routes\":[{\"id\":\"bench/prod\",\"hosts\":[\"*\"],\"sets\":[{\"name\":\"stable\",\"weight\":100,\"instances\":[\"127.0.0.1:$BACKEND_PORT\"]}]}]}" \
    http://admin/table >/dev/null
wait_port "$GANTRY_PORT"
log "gantry: $N requests under callgrind"
G=$(measure "$GANTRY_PORT" "$GPID" "$TMP/gantry/cg")

# nginx as the proxy: one worker process, measured whole.
nginx_conf "$TMP/nginx" "$NGINX_PORT" \
    "upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 512; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$NGINX_PORT backlog=4096; location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host \$host; } }"
valgrind --tool=callgrind --callgrind-out-file="$TMP/nginx/cg" \
    nginx -c "$TMP/nginx/nginx.conf" >"$TMP/nginx/stdout" 2>"$TMP/nginx/stderr" &
NPID=$!
PIDS+=($NPID)
wait_port "$NGINX_PORT"
log "nginx: $N requests under callgrind"
X=$(measure "$NGINX_PORT" "$NPID" "$TMP/nginx/cg")

echo
echo "User-space instructions per request (callgrind; $N HTTP/1.1 keep-alive requests, $CONNS connections)"
echo
echo "| proxy | instructions/request |"
echo "|---|---:|"
echo "| gantry | $G |"
echo "| nginx | $X |"
echo
echo "gantry/nginx: $(awk -v g="$G" -v x="$X" 'BEGIN {printf "%.2fx", g / x}')"
