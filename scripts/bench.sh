#!/usr/bin/env bash
# Builds the release binary, runs `jm bench` with the given flags (see `jm bench --help`), and keeps
# the JSON report in bench-results/bench-<timestamp>.json. Progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
mkdir -p bench-results
out="bench-results/bench-$(date +%Y%m%dT%H%M%S).json"
target/release/jm bench "$@" > "$out"
cat "$out"
echo "bench: report written to $out" >&2
