#!/usr/bin/env bash
# Measures the web dashboard with many jobs. Builds the release binary, starts a local cluster (`jm local`: 3
# replicas with REST, TaskManagers with enough slots), submits JOBS tiny running jobs (a 1 record/s sequence into a
# blackhole, parallelism 1, no checkpoints) through REST in parallel, then reports medians:
#   - GET /jobs/overview from a follower and from the leader: response size and latency (curl, REQUESTS requests each);
#   - the jobs page in headless Chromium, driven over the DevTools protocol, RUNS page loads: time from navigation
#     start until the jobs list is rendered (the page records it in document.body.dataset.firstJobsRenderMs), the
#     browser's fetch + parse of /jobs/overview, the render work itself (sort, filter, DOM, layout), a 2 s refresh's
#     render work, and the work of one keystroke in the filter.
# Needs curl, python3 and Debian's chromium (apt-get install chromium). Every process it starts is stopped on exit.
#
#   scripts/bench-dashboard.sh                  # JOBS=1000 RUNS=5 REQUESTS=25 TMS=4 SLOTS=256 PARALLEL=16
#   JOBS=2000 SLOTS=512 scripts/bench-dashboard.sh
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="${JOBS:-1000}"
runs="${RUNS:-5}"
requests="${REQUESTS:-25}"
tms="${TMS:-4}"
slots="${SLOTS:-256}"
parallel="${PARALLEL:-16}"
browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
[ -n "$browser" ] || { echo "bench-dashboard: needs chromium (apt-get install chromium)" >&2; exit 1; }
command -v curl >/dev/null || { echo "bench-dashboard: needs curl" >&2; exit 1; }

cargo build --release
dir="$(mktemp -d "${TMPDIR:-/tmp}/bench-dashboard.XXXXXX")"
local_pid="" browser_pid=""
cleanup() {
  [ -n "$browser_pid" ] && kill "$browser_pid" 2>/dev/null && wait "$browser_pid" 2>/dev/null
  if [ -n "$local_pid" ] && kill -0 "$local_pid" 2>/dev/null; then
    kill -TERM "$local_pid" # jm local stops its replicas and TaskManagers
    for _ in $(seq 1 150); do kill -0 "$local_pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$local_pid" 2>/dev/null; then
      # It did not stop in 15 s: kill it and the processes it started, by the ids it recorded.
      kill -KILL "$local_pid" 2>/dev/null || true
      python3 -c 'import json,sys; [print(p["pid"]) for p in json.load(open(sys.argv[1]))["processes"]]' \
        "$dir/cluster/cluster.json" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
    fi
    wait "$local_pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "bench-dashboard: starting 3 replicas and $tms TaskManagers x $slots slots in $dir" >&2
target/release/jm local --base-port 0 --data-dir "$dir/cluster" --task-managers "$tms" --slots "$slots" --no-example \
  > "$dir/local.log" 2>&1 &
local_pid=$!
for _ in $(seq 1 300); do
  grep -q "^Leader: replica" "$dir/local.log" 2>/dev/null && break
  kill -0 "$local_pid" 2>/dev/null || { cat "$dir/local.log" >&2; exit 1; }
  sleep 0.1
done
grep -q "^Leader: replica" "$dir/local.log" || { echo "bench-dashboard: no leader" >&2; cat "$dir/local.log" >&2; exit 1; }
mapfile -t rest < <(python3 -c 'import json,sys
for p in json.load(open(sys.argv[1]))["processes"]:
    if p.get("http_addr"): print(p["http_addr"])' "$dir/cluster/cluster.json")
leader="$(curl -sf "http://${rest[0]}/cluster" | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"])')"
leader_rest="${rest[$((leader - 1))]}"
follower_rest="${rest[$((leader % ${#rest[@]}))]}"

echo "bench-dashboard: submitting $jobs jobs ($parallel at a time, round robin over the replicas)" >&2
ms() { echo $(( $(date +%s%N) / 1000000 )); }
submit_start=$(ms)
export REST_ADDRS="${rest[*]}" FAILED="$dir/failed"
: > "$FAILED"
seq 1 "$jobs" | xargs -P "$parallel" -n 1 sh -c '
  i=$1; set -- $REST_ADDRS; shift $(( i % $# )); addr=$1
  curl -sf --retry 5 --retry-all-errors -o /dev/null -X POST -H "Content-Type: application/json" "http://$addr/jobs" \
    -d "{\"name\":\"bench-$i\",\"vertices\":[{\"id\":\"source\",\"operators\":[{\"sequence\":{\"rate\":1}},{\"blackhole\":{}}]}]}" \
    || echo "$i" >> "$FAILED"' _
submit_s=$(( ($(ms) - submit_start) / 1000 ))
failed=$(wc -l < "$FAILED")
[ "$failed" -lt "$jobs" ] || { echo "bench-dashboard: every submission failed" >&2; exit 1; }
[ "$failed" -eq 0 ] || echo "bench-dashboard: $failed submissions failed" >&2
jobs=$((jobs - failed))

echo "bench-dashboard: waiting until the $jobs jobs run" >&2
running=0 last=-1 still=0
while [ "$running" -lt "$jobs" ] && [ "$still" -lt 60 ]; do
  sleep 1
  running="$(curl -sf "http://$leader_rest/overview" | python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs-running"])' || echo "$running")"
  if [ "$running" -eq "$last" ]; then still=$((still + 1)); else still=0 last=$running; fi
done
running_s=$(( ($(ms) - submit_start) / 1000 ))
echo "bench-dashboard: $running jobs running after $running_s s" >&2

overview_figures() { # label addr
  for _ in $(seq 1 "$requests"); do
    curl -sf -o /dev/null -w '%{size_download} %{time_total}\n' "http://$2/jobs/overview"
  done | python3 -c 'import statistics,sys
rows = [l.split() for l in sys.stdin if l.strip()]
sizes = [int(r[0]) for r in rows]; ms = sorted(float(r[1]) * 1000 for r in rows)
print(f"{sys.argv[1]}\t{statistics.median(sizes)}\t{statistics.median(ms):.1f}\t{ms[int(len(ms) * 0.9) - 1]:.1f}")' "$1"
}
overview_follower="$(overview_figures follower "$follower_rest")"
overview_leader="$(overview_figures leader "$leader_rest")"

echo "bench-dashboard: rendering the jobs page $runs times in headless chromium" >&2
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --remote-debugging-port=0 --window-size=1280,900 \
  --user-data-dir="$dir/chromium" about:blank > "$dir/chromium.log" 2>&1 &
browser_pid=$!
page_figures="$(python3 - "$dir/chromium/DevToolsActivePort" "http://$follower_rest/#/jobs" "$runs" <<'PY'
# A minimal DevTools protocol client over a hand-rolled WebSocket (the standard library has none).
import base64, json, os, socket, statistics, struct, sys, time

port_file, url, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])

class WebSocket:
    def __init__(self, port, path):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(4096)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert b" 101 " in head.split(b"\r\n")[0], head

    def send(self, text):
        data, mask = text.encode(), os.urandom(4)
        n = len(data)
        head = b"\x81" + (bytes([0x80 | n]) if n < 126 else bytes([0xFE]) + struct.pack(">H", n) if n < 65536
                          else bytes([0xFF]) + struct.pack(">Q", n))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _read(self, n):
        chunks, have = [self.buf], len(self.buf)
        while have < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError("DevTools closed the connection")
            chunks.append(chunk)
            have += len(chunk)
        data = b"".join(chunks)
        self.buf = data[n:]
        return data[:n]

    def recv(self):
        message = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            payload = self._read(n)
            if b0 & 0x0F == 8:
                raise EOFError("DevTools closed the connection")
            if b0 & 0x0F in (9, 10):
                continue
            message += payload
            if b0 & 0x80:
                return json.loads(message)

class DevTools:
    def __init__(self, port, path):
        self.ws, self.next = WebSocket(port, path), 0

    def call(self, method, **params):
        self.next += 1
        self.ws.send(json.dumps({"id": self.next, "method": method, "params": params}))
        while True:
            m = self.ws.recv()
            if m.get("id") == self.next:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m["result"]

    def eval(self, expression):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return r["result"].get("value")

    def wait(self, expression, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.02)
        raise TimeoutError(expression)

for _ in range(300):
    if os.path.exists(port_file) and len(open(port_file).read().split("\n")) >= 2:
        break
    time.sleep(0.05)
port, browser_path = open(port_file).read().split("\n")[:2]
browser = DevTools(int(port), browser_path)
page = next(t for t in browser.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
tab = DevTools(int(port), f"/devtools/page/{page['targetId']}")
tab.call("Page.enable")
figures = {k: [] for k in ["first", "fetch", "work", "refresh", "filter", "rows", "dom"]}
for run in range(runs):
    tab.call("Page.navigate", url="about:blank")
    tab.call("Page.navigate", url=url)
    first = float(tab.wait("document.body.dataset.firstJobsRenderMs"))
    data = tab.eval("({...document.body.dataset})")
    figures["first"].append(first)
    figures["fetch"].append(float(data["jobsFetchMs"]))
    figures["work"].append(float(data["renderWorkMs"]))
    figures["rows"].append(tab.eval("document.querySelectorAll('tr[data-job]').length"))
    figures["dom"].append(tab.eval("document.getElementsByTagName('*').length"))
    count = int(data["renderCount"])
    tab.wait(f"Number(document.body.dataset.renderCount) > {count}", timeout=10)
    figures["refresh"].append(float(tab.eval("document.body.dataset.renderWorkMs")))
    tab.eval("document.getElementById('job-filter').focus()")
    tab.call("Input.insertText", text="bench-9")
    figures["filter"].append(float(tab.wait("document.body.dataset.filterWorkMs")))
print("\t".join(f"{statistics.median(v):.0f}" if k in ("rows", "dom") else f"{statistics.median(v):.1f}"
                for k, v in figures.items()))
print("per run: " + json.dumps(figures), file=sys.stderr)
PY
)"
read -r first fetch work refresh filter rows dom <<< "$page_figures"
read -r _ f_size f_p50 f_p90 <<< "$overview_follower"
read -r _ l_size l_p50 l_p90 <<< "$overview_leader"

cat <<EOF

Dashboard with $jobs jobs ($running running; submitted in $submit_s s through REST, all running after $running_s s)
GET /jobs/overview, $requests requests each          size         p50        p90
  from a follower                             $(printf '%9s B  %7s ms  %7s ms' "$f_size" "$f_p50" "$f_p90")
  from the leader                             $(printf '%9s B  %7s ms  %7s ms' "$l_size" "$l_p50" "$l_p90")
Jobs page in headless Chromium, median of $runs loads (via the follower)
  navigation start -> jobs list rendered      $(printf '%7s ms' "$first")
  fetch + parse of /jobs/overview             $(printf '%7s ms' "$fetch")
  render work (sort, filter, DOM, layout)     $(printf '%7s ms' "$work")
  render work of a 2 s refresh                $(printf '%7s ms' "$refresh")
  one keystroke in the filter                 $(printf '%7s ms' "$filter")
  rows in the DOM / elements in the page      $(printf '%7s / %s' "$rows" "$dom")
EOF
