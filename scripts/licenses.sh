#!/usr/bin/env bash
# licenses.sh — the licence of every Go module linked into cofferd and coffer.
#
#   scripts/licenses.sh          print the table of docs/licenses.md
#   scripts/licenses.sh --check  fail if docs/licenses.md is not that table,
#                                or a module's licence is not one we accept
#
# go-licenses needs the network; this reads the LICENSE files of the module
# cache instead (`go mod download` fills it). Only modules that are linked
# (go list -deps of ./cmd/...) count: test-only modules are not distributed.
set -euo pipefail
cd "$(dirname "$0")/.."
mc=$(go env GOMODCACHE)
# Licences compatible with distributing Coffer under Apache-2.0.
accepted='Apache-2.0 MIT BSD-2-Clause BSD-3-Clause MPL-2.0 Unicode-DFS-2016'

classify() { # file -> SPDX expression (a file may hold several licences)
	local t ids=()
	t=$(tr -s '[:space:]' ' ' <"$1")
	case "$t" in *"Permission is hereby granted, free of charge"*) ids+=(MIT) ;; esac
	case "$t" in *"Apache License"*"Version 2.0"*) ids+=(Apache-2.0) ;; esac
	case "$t" in *"Mozilla Public License"*"2.0"*) ids+=(MPL-2.0) ;; esac
	case "$t" in
	*"Neither the name"*|*"names of its contributors may be used"*) ids+=(BSD-3-Clause) ;;
	*"Redistribution and use in source and binary forms"*) ids+=(BSD-2-Clause) ;;
	esac
	case "$t" in *"Unicode Data Files"*) ids+=(Unicode-DFS-2016) ;; esac
	if [ ${#ids[@]} = 0 ]; then echo UNKNOWN; return; fi
	local IFS=' '; echo "${ids[*]}" | sed 's/ / AND /g'
}

table() {
	echo "| module | version | licence | file |"
	echo "| --- | --- | --- | --- |"
	go list -deps -f '{{if .Module}}{{.Module.Path}} {{.Module.Version}}{{end}}' ./cmd/... |
		sort -u | grep -v '^github.com/coffer-kms/coffer ' |
		while read -r path ver; do
			# The module cache escapes upper case as !lower.
			esc=$(echo "$path" | sed 's/[A-Z]/!\L&/g')
			dir="$mc/$esc@$ver"
			f=$(cd "$dir" && ls | grep -iE '^(LICEN[CS]E|COPYING)' | head -1 || true)
			if [ -z "$f" ]; then
				echo "| $path | $ver | UNKNOWN (no licence file) | |"
				continue
			fi
			echo "| $path | $ver | $(classify "$dir/$f") | $f |"
		done
}

if [ "${1:-}" != --check ]; then
	table
	exit 0
fi
want=$(table)
bad=$(echo "$want" | tail -n +3 | while IFS='|' read -r _ mod ver lic _; do
	for id in ${lic//AND/}; do
		case " $accepted " in *" $id "*) ;; *) echo "$mod$ver: $lic" ;; esac
	done
done)
if [ -n "$bad" ]; then
	echo "licences not known to be compatible with Apache-2.0 (review, then extend 'accepted' in $0):" >&2
	echo "$bad" >&2
	exit 1
fi
have=$(sed -n '/^<!-- licenses:begin -->$/,/^<!-- licenses:end -->$/p' docs/licenses.md | sed '1d;$d')
if [ "$have" != "$want" ]; then
	echo "docs/licenses.md is out of date with the linked modules; regenerate its table with scripts/licenses.sh:" >&2
	diff <(echo "$have") <(echo "$want") >&2 || true
	exit 1
fi
echo "licences: $(echo "$want" | tail -n +3 | wc -l) linked modules, all compatible, docs/licenses.md up to date"
