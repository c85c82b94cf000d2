#!/usr/bin/env bash
# Issue 15's measurement: the lean load generator (shared/tools/loadgen)
# against the bare ceiling server (shared/tools/ceilingd) and a cofferd dev
# node, in the same run, alternating, ROUNDS rounds; then `coffer bench`
# next to loadgen against ceilingd. Prints a table of medians (and every
# round) of ops/s, p50 and the server's CPU per operation (loadgen -pid),
# which is the figure that counts on a shared machine.
# Usage: scripts/bench-lean.sh [DURATION] [ROUNDS]
#   OLD_COFFERD=path   also measures another cofferd binary (before/after)
#   KEEP=dir           keeps the raw loadgen JSON in dir
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-3s}
ROUNDS=${2:-3}
TOOLS=${TOOLS:-../shared/tools}
work=$(mktemp -d /tmp/coffer-bench-lean.XXXX)
out=${KEEP:-$work/out}
mkdir -p "$out"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

[ -x bin/coffer ] && [ -x bin/cofferd ] || make build >/dev/null
(cd "$TOOLS/loadgen" && GOTOOLCHAIN=local go build -o "$work/loadgen" .)
(cd "$TOOLS/ceilingd" && GOTOOLCHAIN=local go build -o "$work/ceilingd" .)
"$work/ceilingd" -socket "$work/ceil.sock" >/dev/null 2>&1 &
pids+=($!)
declare -A pid sock host
pid[ceil]=$!
sock[ceil]=$work/ceil.sock
host[ceil]=unix
servers=(ceil new)
start() { # name binary
	"$2" --dev --data-dir "$work/$1" --socket "$work/$1.sock" >"$work/$1.out" 2>&1 &
	pids+=($!)
	pid[$1]=$!
	sock[$1]=$work/$1.sock
	host[$1]=coffer
	for _ in $(seq 100); do grep -q "Press Ctrl-C" "$work/$1.out" 2>/dev/null && return; sleep 0.1; done
	echo "cofferd $2 did not start" >&2
	exit 1
}
start new bin/cofferd
if [ -n "${OLD_COFFERD:-}" ]; then
	start old "$OLD_COFFERD"
	servers+=(old)
fi
for _ in $(seq 50); do [ -S "$work/ceil.sock" ] && break; sleep 0.1; done

lg() { # server op round args...
	local s=$1 op=$2 r=$3
	shift 3
	"$work/loadgen" -unix "${sock[$s]}" -pid "${pid[$s]}" -d "$DUR" -warmup 1s -json "$@" >"$out/$s.$op.r$r.json" || true
}
for r in $(seq "$ROUNDS"); do
	echo "round $r: load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
	for s in "${servers[@]}"; do
		h=http://${host[$s]}/v1/keys/dev
		lg "$s" wrap-c32 "$r" -url "$h/wrap" -body '{"plaintext":"{{pt}}"}' -check ciphertext -c 32
		lg "$s" wrap-c1 "$r" -url "$h/wrap" -body '{"plaintext":"{{pt}}"}' -check ciphertext -c 1
		lg "$s" unwrap-c32 "$r" -url "$h/unwrap" -setup-url "$h/wrap" -setup-body '{"plaintext":"{{pt}}"}' -setup-path ciphertext -setup-n 64 -body '{"ciphertext":"{{ct}}"}' -check plaintext -c 32
		if [ "$s" != ceil ]; then # ceilingd has neither datakey nor batches
			lg "$s" datakey-c32 "$r" -url "$h/datakey" -body '{}' -check ciphertext -c 32
			lg "$s" batch100-c8 "$r" -url "$h/wrap" -batch 100 -item '{"plaintext":"{{pt}}"}' -body '{"batch":[{{items}}]}' -batch-path batch -c 8
		fi
	done
	"$work/loadgen" -unix "$work/ceil.sock" -pid "${pid[ceil]}" -d "$DUR" -warmup 1s -json -url http://unix/v1/keys/dev/wrap -body '{"plaintext":"{{pt}}"}' -check ciphertext -c 32 >"$out/loadgen-vs-ceil.wrap-c32.r$r.json" || true
	bin/coffer --socket "$work/ceil.sock" --format json bench wrap --key dev --concurrency 32 --duration "$DUR" --warmup 1s >"$out/cofferbench-vs-ceil.wrap-c32.r$r.json" || true
done
echo "end: load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
python3 - "$out" <<'PY'
import json, glob, re, statistics, sys, collections
rows = collections.defaultdict(list)
for f in sorted(glob.glob(sys.argv[1] + "/*.json")):
    m = re.match(r".*/([\w-]+)\.([\w-]+)\.r(\d+)\.json$", f)
    try:
        rows[(m.group(1), m.group(2))].append(json.load(open(f)))
    except Exception:
        pass
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")
def fig(r, op):
    if "ops_per_sec" in r:  # coffer bench
        cpu = (r.get("server_cpu") or {}).get("per_1000_requests")
        return r["ops_per_sec"], r["latency_us"]["p50"], cpu
    if op.startswith("batch"):
        cpu = r["server_cpu_s"] / r["items_ok"] * 1e6 if r.get("server_cpu_s") is not None and r.get("items_ok") else None
        return r["items_per_s"], r["latency_us"]["p50"], cpu
    return r["ops_per_s"], r["latency_us"]["p50"], r.get("server_cpu_s_per_1000_ops")
print("| server | op | ops/s (items/s) median | p50 µs | server CPU-s / 1,000 ops (µs / item) | rounds: ops/s | rounds: server CPU |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for (s, op), rs in sorted(rows.items(), key=lambda k: (k[0][1], k[0][0])):
    f = [fig(r, op) for r in rs]
    cpu = med([x[2] for x in f])
    print("| %s | %s | %s | %.0f | %s | %s | %s |" % (s, op, "{:,.0f}".format(med([x[0] for x in f])), med([x[1] for x in f]),
          ("%.2f" % cpu) if op.startswith("batch") else ("%.4f" % cpu),
          ", ".join("{:,.0f}".format(x[0]) for x in f), ", ".join(("%.4f" % x[2]) if x[2] is not None else "-" for x in f)))
PY
