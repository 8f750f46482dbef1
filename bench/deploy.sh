#!/usr/bin/env bash
# Deploy benchmark: Gantry's blue-green switch, warm and automatic rollbacks
# vs a scripted nginx-reload blue-green switch, under the same steady
# keep-alive load on loopback. Prints medians and the goals.
#
#   bash bench/deploy.sh
#
# Parameters (env vars): ROUNDS=5, CLIENTS=4 (load threads), PORT_BASE=18500
# (ports PORT_BASE..+11 and +100..+199 on 127.0.0.1), SKIP_BUILD=1,
# KEEP_TMP=1 (keep the temp dir). Everything runs from a temp dir; every
# process started is stopped at the end.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
log() { printf '[bench] %s\n' "$*" >&2; }

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
need_tools nginx:nginx python3:python3

if [ -z "${SKIP_BUILD:-}" ]; then
    log "building gantry and the example app (release)"
    cargo build --release --locked --bin gantry
    CARGO_TARGET_DIR="$ROOT/target/examples" cargo build --release --locked \
        --manifest-path examples/hello-app/Cargo.toml
fi
exec python3 "$ROOT/bench/deploy.py"
