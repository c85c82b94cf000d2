#!/bin/bash
# sdboot.sh: boot a real systemd (Debian 12) in systemd-nspawn, on a host whose
# PID 1 need not be systemd, and drive it with systemctl. Root only. Used by
# e2e/systemd_test.go; adapted from the project's recipe (systemd-boot.md).
#
#   sdboot.sh rootfs                  print the cached rootfs dir, building it first if needed
#   sdboot.sh up DIR NAME [args]      boot DIR; returns once the default target is reached
#   sdboot.sh exec NAME CMD [ARGS]    run CMD inside (as root, host privileges); stdin passes through
#   sdboot.sh down NAME               clean poweroff, then remove its cgroups and state
#
# The rootfs is cached outside the repository, under SDBOOT_CACHE
# (default /var/tmp/coffer-sdboot), in a directory named after a hash of what
# goes into it (suite, variant, packages, and ROOTFS_RECIPE below): change any
# of them and a new tree is built; the old one can be deleted by hand. `up`
# never writes to it (--volatile=overlay), so one tree serves every run.
#
# `up` gives the container only a loopback network, CAP_IPC_LOCK, bpf()
# and a full cgroup2 hierarchy, so that DevicePolicy=/DeviceAllow= and
# IPAddressDeny=/IPAddressAllow= are enforced inside.
set -euo pipefail
STATE_BASE=${SDBOOT_STATE:-/tmp/coffer-sdboot-state}
TIMEOUT=${SDBOOT_TIMEOUT:-120}
CACHE=${SDBOOT_CACHE:-/var/tmp/coffer-sdboot}
SUITE=bookworm
VARIANT=minbase
# systemd as PID 1 (and its D-Bus), plus SoftHSM2 for the PKCS#11 seal.
INCLUDE=systemd,systemd-sysv,dbus,softhsm2
# Bump when the way the tree is built changes in a way the above does not show.
ROOTFS_RECIPE=1
DEFAULT_ARGS="--volatile=overlay --private-network --capability=CAP_IPC_LOCK --system-call-filter=bpf"
die() { echo "sdboot.sh: $*" >&2; exit 1; }

mirror() { # the Debian mirror apt uses for bookworm (deb822 .sources or one-line .list)
  local m
  m=$(awk '/^[[:space:]]*$/{u=""} /^URIs:/{u=$2} /^Suites:/ && / bookworm( |$)/ && u {print u; exit}' \
        /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$m" ] || m=$(sed -E 's/\[[^]]*\]//' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk '$1=="deb" && $3=="bookworm" {print $2; exit}' || true)
  echo "${m:-http://deb.debian.org/debian}"
}

rootfs_dir() {
  local key
  key=$(printf '%s\n' "$SUITE" "$VARIANT" "$INCLUDE" "$ROOTFS_RECIPE" | sha256sum | cut -c1-12)
  echo "$CACHE/$SUITE-$key"
}

cmd_rootfs() {
  local dir lock
  dir=$(rootfs_dir)
  for t in debootstrap systemd-nspawn pgrep nsenter flock; do
    command -v "$t" >/dev/null || die "$t is missing: run make deps (installs debootstrap, systemd-container, procps)"
  done
  mkdir -p "$CACHE"
  lock=$CACHE/.lock
  exec 9>"$lock"
  flock 9   # two test runs at once: the second waits and then finds the tree
  if [ ! -x "$dir/usr/lib/systemd/systemd" ]; then
    rm -rf "$dir.partial"   # built aside, so an interrupted run never leaves a half tree at DIR
    debootstrap --variant=$VARIANT --include=$INCLUDE $SUITE "$dir.partial" "$(mirror)" > "$CACHE/debootstrap.log" 2>&1 ||
      { tail -20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
    rm -rf "$dir.partial/var/cache/apt/archives/"*.deb "$dir.partial/var/lib/apt/lists/"*_Packages
    mv "$dir.partial" "$dir"
    # Trees of earlier recipes are of no more use (~160 MB each).
    for old in "$CACHE/$SUITE-"*; do
      [ "$old" = "$dir" ] || [ ! -d "$old" ] || rm -rf "$old"
    done
  fi
  echo "$dir"
}

leader_of() { cat "$STATE_BASE/$1/leader.pid" 2>/dev/null || die "$1 is not up"; }

cmd_up() {
  local dir name st nspid l="" s="" c ns end
  dir=$(readlink -f "${1:?usage: up DIR NAME [nspawn args]}"); name=${2:?usage: up DIR NAME}; shift 2
  [ -x "$dir/usr/lib/systemd/systemd" ] || die "$dir has no systemd (run: $0 rootfs)"
  st=$STATE_BASE/$name
  if [ -e "$st/nspawn.pid" ] && kill -0 "$(cat "$st/nspawn.pid")" 2>/dev/null; then die "$name is already up"; fi
  mkdir -p "$st"
  # Full cgroup2 inside the container: needed for BPF device policy (DevicePolicy=).
  export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=${SYSTEMD_NSPAWN_UNIFIED_HIERARCHY:-1}
  (
    # own cgroup, so nspawn's payload/ and supervisor/ do not land at the hierarchy roots
    for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified /sys/fs/cgroup; do
      if [ -w "$h/cgroup.procs" ] && [ "$(stat -f -c %T "$h")" != tmpfs ]; then
        { mkdir -p "$h/sdboot-$name" && echo "$BASHPID" > "$h/sdboot-$name/cgroup.procs"; } || true
      fi
    done
    # --register=no --keep-unit: no host D-Bus/machined/systemd needed
    # --console=pipe: a passive console pty fills up and blocks the container's PID 1
    # --system-call-filter=bpf: nspawn's seccomp filter otherwise refuses bpf(), and
    #   the container's systemd then silently skips IPAddressDeny= and DevicePolicy=
    # shellcheck disable=SC2086
    exec systemd-nspawn -q -D "$dir" -M "$name" -b --register=no --keep-unit --console=pipe $DEFAULT_ARGS "$@"
  ) > "$st/nspawn.log" 2>&1 < /dev/null &
  nspid=$!; echo "$nspid" > "$st/nspawn.pid"
  end=$((SECONDS + TIMEOUT))
  while [ -z "$l" ]; do   # container PID 1 = nspawn's child in another PID namespace
    for c in $(pgrep -P "$nspid" || true); do
      ns=$(readlink "/proc/$c/ns/pid" 2>/dev/null || true)   # empty: already gone (nspawn's short-lived outer child)
      [ -n "$ns" ] && [ "$ns" != "$(readlink "/proc/$nspid/ns/pid")" ] && l=$c
    done
    kill -0 "$nspid" 2>/dev/null || { cat "$st/nspawn.log" >&2; die "nspawn exited"; }
    [ $SECONDS -lt $end ] || die "no container init after ${TIMEOUT}s"
    [ -n "$l" ] || sleep 0.1
  done
  echo "$l" > "$st/leader.pid"
  while :; do
    s=$(timeout 5 nsenter -t "$l" -a systemctl is-system-running 2>/dev/null || true)
    case "$s" in running|degraded) break ;; esac
    kill -0 "$nspid" 2>/dev/null || { cat "$st/nspawn.log" >&2; die "container exited during boot"; }
    [ $SECONDS -lt $end ] || die "not booted after ${TIMEOUT}s (state: ${s:-no answer})"
    sleep 0.1
  done
  [ "$s" = degraded ] && nsenter -t "$l" -a systemctl --failed --no-pager >&2
  echo "$name: $s (container PID 1 = host PID $l)"
}

cmd_exec() {
  local l; l=$(leader_of "${1:?usage: exec NAME CMD...}"); shift
  exec nsenter -t "$l" -a -- "$@"
}

cmd_down() {
  local name=${1:?usage: down NAME} st nspid l h
  st=$STATE_BASE/$name
  nspid=$(cat "$st/nspawn.pid" 2>/dev/null) || return 0
  l=$(cat "$st/leader.pid" 2>/dev/null || true)
  if kill -0 "$nspid" 2>/dev/null; then
    kill -TERM "$nspid"    # nspawn turns SIGTERM into a clean poweroff of the container
    for _ in $(seq 300); do kill -0 "$nspid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$nspid" 2>/dev/null; then
      echo "sdboot.sh: $name did not power off in 30s, killing" >&2
      [ -n "$l" ] && kill -KILL "$l" 2>/dev/null
      kill -KILL "$nspid" 2>/dev/null || true
      for _ in $(seq 100); do kill -0 "$nspid" 2>/dev/null || break; sleep 0.1; done
    fi
  fi
  for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified /sys/fs/cgroup; do
    [ -d "$h/sdboot-$name" ] && find "$h/sdboot-$name" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  rm -rf "$st"
}

sub=${1:-}; shift || true
case "$sub" in
  rootfs) cmd_rootfs "$@" ;;
  up) cmd_up "$@" ;;
  exec) cmd_exec "$@" ;;
  down) cmd_down "$@" ;;
  *) sed -n '2,17p' "$0" >&2; exit 2 ;;
esac
