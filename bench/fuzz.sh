#!/usr/bin/env bash
# Fuzzing: every Gantry parser of untrusted bytes under libFuzzer
# (cargo-fuzz), one target at a time, each for a fixed time.
#
#   bash bench/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#   bash bench/fuzz.sh 60                     # a smoke run of every target
#   bash bench/fuzz.sh 600 spec bundle        # ten minutes each of two
#
# Targets (fuzz/fuzz_targets/, the entry points they call):
#   spec                   gantry.toml: parse, walk, resolve, render  (gantry_spec::fuzz)
#   bundle                 a source bundle's .tar.gz, unpacked         (gantry_api::bundle::fuzz)
#   table_json             PUT /table's JSON, validated and compiled   (gantry_proxy::fuzz)
#   http1_request_head     the own HTTP/1.1 server's request heads
#   http1_response_head    the own HTTP/1.1 client's answers from backends
#   chunked_body           the own chunked decoder
#   proxy_protocol_header  PROXY protocol v1/v2 headers
#
# Installs cargo-fuzz (nightly) when it is missing, builds the targets
# (release, debug assertions and overflow checks, AddressSanitizer), then
# runs each with -max_total_time, -rss_limit_mb=2048 and -timeout=10 (an
# input that takes longer is reported as a crash). The corpus grows in
# fuzz/corpus/<target> (seeded from fuzz/seeds/<target>), crashes land in
# fuzz/artifacts/<target>, full logs in fuzz/logs/<target>.log; all three
# are ignored by git. Prints per target: time, executions, exec/s,
# coverage (cov/ft of libFuzzer's last status line), crashes. Exits 1 when
# a target crashed (after running the others), with the artifact's path.
set -euo pipefail

ALL=(spec bundle table_json http1_request_head http1_response_head chunked_body proxy_protocol_header)
SECS=${1:-600}
[ $# -gt 0 ] && shift
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL[@]}")
case $SECS in
    '' | *[!0-9]*) echo "fuzz.sh: SECONDS_PER_TARGET must be a number, not \`$SECS\`" >&2; exit 2 ;;
esac
for t in "${TARGETS[@]}"; do
    case " ${ALL[*]} " in
        *" $t "*) ;;
        *) echo "fuzz.sh: unknown target \`$t\`; targets: ${ALL[*]}" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT/fuzz"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "[fuzz] installing cargo-fuzz" >&2
    cargo +nightly install cargo-fuzz --locked
fi
echo "[fuzz] building ${TARGETS[*]} (commit $(git -C "$ROOT" rev-parse --short HEAD))" >&2
for t in "${TARGETS[@]}"; do
    cargo +nightly fuzz build "$t"
done

# Extra seed directories besides fuzz/seeds/<target>.
extra_seeds() {
    case $1 in
        spec) echo "$ROOT/crates/gantry-spec/tests/fixtures" ;;
    esac
}

mkdir -p logs
rows=()
crashed=0
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log="logs/$t.log"
    args=(-max_total_time="$SECS" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1)
    [ -f "dicts/$t.dict" ] && args+=(-dict="dicts/$t.dict")
    # shellcheck disable=SC2046
    seeds=("seeds/$t" $(extra_seeds "$t"))
    echo "[fuzz] $t: ${SECS}s, log $PWD/$log" >&2
    start=$(date +%s)
    rc=0
    # The outer timeout only guards against a fuzzer that does not stop.
    timeout --kill-after=30 $((SECS + 300)) \
        cargo +nightly fuzz run "$t" "corpus/$t" "${seeds[@]}" -- "${args[@]}" >"$log" 2>&1 || rc=$?
    # libFuzzer's own count of the seconds it fuzzed; else the wall clock
    # (which includes a rebuild, if the sources changed since the build).
    took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
    took=${took:-$(($(date +%s) - start))}
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    status=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$status")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$status")
    corp=$(sed -n 's/.* corp: \([0-9]*\)\/.*/\1/p' <<<"$status")
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    if [ "$rc" -ne 0 ] || [ -n "$artifact" ]; then
        crashed=1
        result="CRASH (exit $rc): ${artifact:-no artifact, see $log}"
    else
        result="0 crashes"
    fi
    rows+=("$(printf '%-22s %6ss %12s %9s %7s %7s %7s  %s' "$t" "$took" "${runs:-?}" "${rate:-?}" \
        "${cov:-?}" "${ft:-?}" "${corp:-?}" "$result")")
    echo "${rows[-1]}" >&2
done

printf '\n%-22s %7s %12s %9s %7s %7s %7s  %s\n' target time executions exec/s cov ft corpus result
printf '%s\n' "${rows[@]}"
if [ "$crashed" -ne 0 ]; then
    echo "[fuzz] a target crashed: reproduce with \`cargo +nightly fuzz run <target> <artifact>\` in fuzz/" >&2
    exit 1
fi
