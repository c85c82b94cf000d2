#!/bin/bash
# softhsm-token.sh DIR [LABEL] [USER_PIN] [SO_PIN]
#
# Creates (or extends) a private SoftHSM2 token store under DIR - never the
# system one in /var/lib/softhsm - initialises a token labelled LABEL in the
# next free slot, and prints the line that points SoftHSM at the store:
#
#   eval "$(softhsm-test/softhsm-token.sh /tmp/coffer-hsm)"        # coffer-test, PIN 1234
#   softhsm-test/softhsm-token.sh /tmp/coffer-hsm node2 1234         # a second token, same store
#   softhsm2-util --show-slots | grep -E 'Slot|Label'
#
# Defaults: LABEL coffer-test, USER_PIN 1234, SO_PIN 12345678. Only the export
# line goes to stdout, so the output can be eval'ed. SoftHSM reads
# SOFTHSM2_CONF and scans the store once, when a process calls C_Initialize:
# a process that is already running does not see a token added afterwards.
set -euo pipefail

usage="usage: softhsm-token.sh DIR [LABEL] [USER_PIN] [SO_PIN]"
DIR=${1:?$usage}
LABEL=${2:-coffer-test}
PIN=${3:-1234}
SOPIN=${4:-12345678}

if ! command -v softhsm2-util >/dev/null 2>&1; then
	echo "softhsm-token.sh: softhsm2-util not found: install softhsm2 opensc (make deps)" >&2
	exit 1
fi
if [ "${#LABEL}" -gt 32 ]; then
	echo "softhsm-token.sh: label \"$LABEL\" is ${#LABEL} bytes; PKCS#11 token labels hold at most 32" >&2
	exit 2
fi

mkdir -p "$DIR/tokens"              # SoftHSM does not create its tokendir
chmod 700 "$DIR" "$DIR/tokens"
DIR=$(cd "$DIR" && pwd)             # absolute: the conf is read from any working directory
CONF=$DIR/softhsm2.conf

# Rewriting an existing conf is harmless (same content) and repairs a broken one.
cat >"$CONF" <<CONF
directories.tokendir = $DIR/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
slots.mechanisms = ALL
library.reset_on_fork = false
CONF
chmod 600 "$CONF"

export SOFTHSM2_CONF=$CONF
# Collected first: grep -q on a live pipe could SIGPIPE the writer under pipefail.
labels=$(softhsm2-util --show-slots 2>/dev/null | sed -n 's/^ *Label: *//p' | sed 's/ *$//') || labels=
if grep -Fxq -- "$LABEL" <<<"$labels"; then
	# Two tokens with one label make every lookup by label ambiguous.
	echo "softhsm-token.sh: $DIR already holds a token labelled \"$LABEL\"; pick another label or delete it: SOFTHSM2_CONF=$CONF softhsm2-util --delete-token --token $LABEL" >&2
	exit 1
fi
if ! out=$(softhsm2-util --init-token --free --label "$LABEL" --so-pin "$SOPIN" --pin "$PIN" 2>&1); then
	echo "softhsm-token.sh: softhsm2-util --init-token failed: $out" >&2
	exit 1
fi
echo "export SOFTHSM2_CONF=$CONF"
