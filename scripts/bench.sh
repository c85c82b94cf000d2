#!/usr/bin/env bash
# Load benchmarks for docs/benchmarks.md: `coffer bench` against the bare
# ceiling server (shared/tools/ceilingd) and against a cofferd dev node, in
# the same run, on this machine. Usage: scripts/bench.sh [DURATION]
#   KEYS=10000 scripts/bench.sh   also loads 10,000 keys x 3 versions first
#                                 and reports the daemon's RSS under load.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10s}
KEYS=${KEYS:-0}
CEILING_SRC=${CEILING_SRC:-../shared/tools/ceilingd}
work=$(mktemp -d /tmp/coffer-bench.XXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

[ -x bin/coffer ] && [ -x bin/cofferd ] || make build >/dev/null
if [ -d "$CEILING_SRC" ]; then
	(cd "$CEILING_SRC" && GOTOOLCHAIN=local go build -o "$work/ceilingd" .)
	"$work/ceilingd" -socket "$work/ceil.sock" >/dev/null 2>&1 &
	pids+=($!)
fi
bin/cofferd --dev --data-dir "$work/dev" --socket "$work/coffer.sock" >"$work/dev.out" 2>"$work/dev.err" &
dpid=$!
pids+=($dpid)
for _ in $(seq 100); do [ -S "$work/coffer.sock" ] && grep -q "Press Ctrl-C" "$work/dev.out" 2>/dev/null && break; sleep 0.1; done
C="bin/coffer --socket $work/coffer.sock"
$C key create bench >/dev/null

if [ "$KEYS" -gt 0 ]; then
	echo "loading $KEYS keys x 3 versions..."
	seq 1 "$KEYS" | xargs -P 8 -I{} curl -sf -o /dev/null --unix-socket "$work/coffer.sock" -X POST http://coffer/v1/keys -d '{"name":"k{}"}'
	for _ in 1 2; do
		seq 1 "$KEYS" | xargs -P 8 -I{} curl -sf -o /dev/null --unix-socket "$work/coffer.sock" -X POST http://coffer/v1/keys/k{}/rotate
	done
fi

row() { # label socket args...
	local label=$1 sock=$2; shift 2
	bin/coffer --socket "$sock" --format json bench "$@" --duration "$DUR" 2>/dev/null | python3 -c '
import json,sys
r=json.load(sys.stdin); l=r["latency_us"]; cpu=r.get("server_cpu") or {}
per=cpu.get("per_1000_items") or cpu.get("per_1000_requests")
print("| %s | %s | %d | %d | %s | %.0f | %.0f | %.0f | %.0f | %s | %d |" % (sys.argv[1], r["op"], r["concurrency"], r["batch"],
  "{:,.0f}".format(r["items_per_sec"]), l["p50"], l["p99"], l["p99.9"], l["max"], ("%.5f" % per) if per else "-", r["failed_requests"]))' "$label"
}
echo
echo "| server | op | concurrency | batch | items/s | p50 µs | p99 µs | p99.9 µs | max µs | server CPU-s / 1,000 items | failed |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for c in 1 8 32; do
	[ -S "$work/ceil.sock" ] && row ceilingd "$work/ceil.sock" wrap --concurrency $c
	row cofferd "$work/coffer.sock" wrap --concurrency $c
done
for c in 1 32; do
	[ -S "$work/ceil.sock" ] && row ceilingd "$work/ceil.sock" unwrap --concurrency $c
	row cofferd "$work/coffer.sock" unwrap --concurrency $c
done
row cofferd "$work/coffer.sock" wrap --concurrency 8 --batch 100
row cofferd "$work/coffer.sock" wrap --concurrency 32 --size 4096
echo
grep -E 'VmRSS|VmHWM' /proc/$dpid/status | sed 's/^/cofferd /'
