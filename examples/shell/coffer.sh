#!/bin/sh
# Use Coffer from a shell script with curl over cofferd's unix socket
# (docs/api.md). Binary fields are base64.
#
#   COFFER_SOCKET=/tmp/coffer.sock sh coffer.sh dev
#
# curl -f would hide cofferd's error body: keep it, and branch on the code.
set -eu
SOCK=${COFFER_SOCKET:-/run/coffer/coffer.sock}
KEY=${1:-dev}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

api() { # METHOD PATH [JSON] -> prints the body; fails with the error code
	# The body goes through stdin (--data-binary @-), never curl's argv:
	# arguments are visible to every user in ps and /proc/PID/cmdline.
	out=$(printf '%s' "${3:-}" | curl -sS --unix-socket "$SOCK" -X "$1" -H 'Content-Type: application/json' \
		${3:+--data-binary @-} -w '\n%{http_code}' "http://coffer$2")
	status=$(printf '%s\n' "$out" | tail -n 1)
	body=$(printf '%s\n' "$out" | sed '$d')
	case "$status" in
	2??) printf '%s\n' "$body" ;;
	*) printf 'coffer: HTTP %s: %s\n' "$status" "$body" >&2; return 1 ;;
	esac
}

# Extract a string field from a flat JSON answer (no jq needed).
field() { sed -n "s/.*\"$1\":\"\\([^\"]*\\)\".*/\\1/p"; }

plaintext=$(printf 'db-password-42' | base64)
ct=$(api POST "/v1/keys/$KEY/wrap" "{\"plaintext\":\"$plaintext\"}" | field ciphertext)
echo "ciphertext: ${ct%%:*}:…"
back=$(api POST "/v1/keys/$KEY/unwrap" "{\"ciphertext\":\"$ct\"}" | field plaintext | base64 -d)
echo "round trip: $back"

# Errors: the body says the code.
if ! api GET /v1/keys/no-such-key >/dev/null 2>"$tmp/err"; then
	echo "missing key: $(field code < "$tmp/err")"
fi

# Large files: use the CLI's envelope encryption rather than wrap (64 KiB).
if command -v coffer >/dev/null; then
	head -c 200000 /dev/urandom > "$tmp/big"
	coffer --socket "$SOCK" encrypt --key "$KEY" --out "$tmp/big.cfe" "$tmp/big"
	coffer --socket "$SOCK" decrypt --out "$tmp/big.back" "$tmp/big.cfe"
	cmp "$tmp/big" "$tmp/big.back" && echo "envelope: 200000 bytes round trip"
fi
