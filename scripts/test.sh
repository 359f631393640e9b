#!/usr/bin/env bash
# The test command of the README: unit tests, property tests, openraft's storage suite, the chaos suite's
# checkers and its deterministic tier (seeded runs on turmoil's simulated network, jepsen/tests/sim.rs), and the
# multi-process tests that run real `jm` binaries on 127.0.0.1 and SIGKILL them. Ends with one line totalling
# every test binary's results.
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --all-targets "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
exit "$status"
