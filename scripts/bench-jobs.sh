#!/usr/bin/env bash
# Builds the release binary and runs `jm bench-jobs` RUNS times (default 3) with the given flags (see
# `jm bench-jobs --help`), keeping each JSON report in bench-results/, then prints the medians over the runs:
# time from a leader's SIGKILL until every running job has a new completed checkpoint (p50, p99), jobs restarted
# by the kills, checkpoints committed per second, and leader memory per running job.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${RUNS:-3}"
cargo build --release
mkdir -p bench-results
reports=()
for run in $(seq 1 "$runs"); do
  out="bench-results/bench-jobs-$(date +%Y%m%dT%H%M%S)-$run.json"
  echo "bench-jobs: run $run of $runs" >&2
  target/release/jm bench-jobs "$@" > "$out"
  reports+=("$out")
done
python3 - "${reports[@]}" <<'PY'
import json, statistics, sys
rs = [json.load(open(p)) for p in sys.argv[1:]]
def med(f):
    vals = [v for v in (f(r) for r in rs) if v is not None]
    return round(statistics.median(vals), 1) if vals else None
print(json.dumps({
    "runs": len(rs),
    "failover_p50_ms": med(lambda r: r["failover"]["p50_ms"]),
    "failover_p99_ms": med(lambda r: r["failover"]["p99_ms"]),
    "jobs_restarted_by_kills": [r["failover"]["jobs_restarted_by_kills"] for r in rs],
    "checkpoints_per_second": med(lambda r: (r.get("checkpoint_throughput") or {}).get("checkpoints_per_second")),
    "leader_rss_per_job_kib": med(lambda r: (r.get("checkpoint_throughput") or {}).get("leader_rss_per_job_kib")),
    "reports": sys.argv[1:],
}, indent=2))
PY
