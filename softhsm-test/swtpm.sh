#!/bin/bash
# swtpm.sh — a private TPM 2.0 emulator (swtpm) for tests and `make run`.
#
#   swtpm.sh DIR [PORT]   start swtpm on state dir DIR: command port PORT
#                         (default 2321) and control port PORT+1, both on
#                         127.0.0.1; prints the PID and `export` hints
#   swtpm.sh stop DIR     stop the emulator started on DIR
#
# Reusing DIR keeps the TPM's seeds, so the storage key and sealed blobs
# survive a restart; the PCRs are reset at every start (startup-clear).
# swtpm serves ONE client at a time: while cofferd holds the connection,
# tpm2-tools wait (and vice versa). Use one emulator per node.
set -euo pipefail

usage() {
	echo "usage: $0 DIR [PORT]    start an emulator (default port 2321)" >&2
	echo "       $0 stop DIR      stop it" >&2
	exit 2
}

need() {
	command -v "$1" >/dev/null 2>&1 || {
		echo "$0: $1 not found; install swtpm swtpm-tools tpm2-tools (make deps)" >&2
		exit 1
	}
}

# running PID: true while PID is alive. A daemonised swtpm's parent is PID 1,
# which may be slow to reap it: a zombie counts as stopped.
running() {
	local state
	state=$(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null) || return 1
	[ -n "$state" ] && [ "$state" != Z ]
}

stop() {
	local dir=$1 pidfile=$1/swtpm.pid pid
	if [ ! -f "$pidfile" ]; then
		echo "$0: no $pidfile: no emulator started on $dir" >&2
		return 0
	fi
	pid=$(cat "$pidfile")
	# Only signal the process if it still is a swtpm: the PID may have been
	# reused since the file was written.
	if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = swtpm ]; then
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 1 50); do
			running "$pid" || break
			sleep 0.1
		done
		if running "$pid"; then
			echo "$0: swtpm $pid did not stop on SIGTERM; killing it" >&2
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	rm -f "$pidfile"
}

[ $# -ge 1 ] || usage
if [ "$1" = stop ]; then
	[ $# -eq 2 ] || usage
	stop "$2"
	exit 0
fi
[ $# -le 2 ] || usage

need swtpm
DIR=$1
PORT=${2:-2321}
case $PORT in
'' | *[!0-9]*) echo "$0: PORT must be a number, got '$PORT'" >&2; exit 2 ;;
esac
if [ "$PORT" -lt 1 ] || [ "$PORT" -gt 65534 ]; then
	echo "$0: PORT must be between 1 and 65534 (PORT+1 is the control port)" >&2
	exit 2
fi

mkdir -p "$DIR"
chmod 700 "$DIR"
DIR=$(cd "$DIR" && pwd)
if [ -f "$DIR/swtpm.pid" ] && [ "$(cat "/proc/$(cat "$DIR/swtpm.pid")/comm" 2>/dev/null)" = swtpm ]; then
	echo "$0: an emulator is already running on $DIR (PID $(cat "$DIR/swtpm.pid")); run: $0 stop $DIR" >&2
	exit 1
fi

swtpm socket --tpm2 \
	--tpmstate dir="$DIR" \
	--server type=tcp,port="$PORT",bindaddr=127.0.0.1 \
	--ctrl type=tcp,port=$((PORT + 1)),bindaddr=127.0.0.1 \
	--flags not-need-init,startup-clear \
	--pid file="$DIR/swtpm.pid" \
	--log file="$DIR/swtpm.log",level=1 \
	--daemon || {
	echo "$0: swtpm failed to start (port $PORT or $((PORT + 1)) in use?); see $DIR/swtpm.log" >&2
	exit 1
}

# --daemon returns once the sockets are bound; check that the port answers.
for _ in $(seq 1 50); do
	if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
		echo "$(cat "$DIR/swtpm.pid")"
		cat <<EOF
# swtpm on 127.0.0.1:$PORT (control port $((PORT + 1))), state in $DIR
# cofferd config: seal "tpm" { address = "127.0.0.1:$PORT" }
export TPM2TOOLS_TCTI=swtpm:host=127.0.0.1,port=$PORT
# stop: $0 stop $DIR
EOF
		exit 0
	fi
	sleep 0.1
done
echo "$0: swtpm did not come up on port $PORT; see $DIR/swtpm.log" >&2
stop "$DIR"
exit 1
