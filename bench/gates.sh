#!/usr/bin/env bash
# Gates under load: the same code deployed as a canary while the machine is
# busy (CPU hogs on every core), judged against the stable set (the default)
# and on absolute limits. Prints each deploy's outcome and the p99s the gates
# saw; the goal: identical code is never rolled back when judged against
# the stable set, while a tight absolute p99 limit rolls it back.
#
#   bash bench/gates.sh
#
# Parameters (env vars): ROUNDS=3, CLIENTS=4, HOGS=8 (busy processes),
# MAX_P99=5ms (the absolute limit), PORT_BASE=18700, SKIP_BUILD=1.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
need_tools python3:python3
if [ -z "${SKIP_BUILD:-}" ]; then
    printf '[bench] building gantry and the example app (release)\n' >&2
    cargo build --release --locked --bin gantry
    CARGO_TARGET_DIR="$ROOT/target/examples" cargo build --release --locked \
        --manifest-path examples/hello-app/Cargo.toml
fi
PORT_BASE=${PORT_BASE:-18700} exec python3 "$ROOT/bench/gates.py"
