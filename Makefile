# Coffer — build, run and test. `make help` lists the targets.
SHELL      := /bin/bash
GO         ?= go
export GOTOOLCHAIN := local
export CGO_ENABLED := 1

VERSION    ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo 0.1.0-dev)
COMMIT     ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS    := -X github.com/coffer-kms/coffer/internal/version.Version=$(VERSION) \
              -X github.com/coffer-kms/coffer/internal/version.Commit=$(COMMIT) \
              -X github.com/coffer-kms/coffer/cli.Version=$(VERSION) -X github.com/coffer-kms/coffer/cli.Commit=$(COMMIT)
FUZZTIME   ?= 5s
# Debian packages the tests use (SoftHSM2 + pkcs11-tool, swtpm + tpm2-tools
# for the device tests; systemd-analyze from systemd for the unit checks,
# systemd-nspawn, debootstrap and pgrep to boot a real systemd for the
# unit's end-to-end test).
APT_PKGS   := gcc libc6-dev softhsm2 opensc swtpm swtpm-tools tpm2-tools curl \
              systemd systemd-container debootstrap procps man-db groff-base python3

# Install layout: `make install DESTDIR=/tmp/stage PREFIX=/usr`. PREFIX
# defaults to /usr/local for a hand install; packages use /usr. systemd
# reads units, sysusers.d and tmpfiles.d under both /usr/lib and
# /usr/local/lib.
PREFIX      ?= /usr/local
BINDIR      ?= $(PREFIX)/bin
LIBDIR      ?= $(PREFIX)/lib
UNITDIR     ?= $(LIBDIR)/systemd/system
SYSUSERSDIR ?= $(LIBDIR)/sysusers.d
TMPFILESDIR ?= $(LIBDIR)/tmpfiles.d
DATADIR     ?= $(PREFIX)/share
DOCDIR      ?= $(DATADIR)/doc/coffer
BASHCOMPDIR ?= $(DATADIR)/bash-completion/completions
# Debian's zsh looks in vendor-completions for packaged (/usr) completions
# and in site-functions under /usr/local.
ZSHCOMPDIR  ?= $(if $(filter /usr,$(PREFIX)),$(DATADIR)/zsh/vendor-completions,$(DATADIR)/zsh/site-functions)
FISHCOMPDIR ?= $(DATADIR)/fish/vendor_completions.d
MANDIR      ?= $(DATADIR)/man

# Fuzz targets: package, target.
FUZZ_TARGETS := \
	./keystore/shamir:FuzzParse \
	./keystore/shamir:FuzzCombine \
	./keystore:FuzzParseCiphertext \
	./keystore:FuzzUnwrapEach \
	./keystore:FuzzXAESOpen \
	./keystore:FuzzDecodeCommand \
	./keystore:FuzzSnapshotEncode \
	./keystore:FuzzSnapshotDecode \
	./keystore:FuzzUnixTimes \
	./cluster:FuzzRPC \
	./daemon:FuzzDecodeRequest \
	./daemon:FuzzFastDecode \
	./daemon:FuzzBatchEncode \
	./daemon:FuzzFastHead \
	./daemon:FuzzFastStream \
	./daemon/config:FuzzParseConfig \
	./daemon/audit:FuzzParseLine \
	./daemon/auth:FuzzParseCredentialAddress \
	./daemon/kmsv2:FuzzDecrypt \
	./client:FuzzEnvelopeOpen

.PHONY: help deps build man deb run install test test-unit test-systemd lint licenses fuzz fuzz-smoke bench bench-load bench-lean bench-kms clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

deps: ## install what builds and tests need (apt-get, only what is missing)
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		if [ "$$(id -u)" != 0 ]; then SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@$(GO) mod download
	@cd e2e/kmsv2 && $(GO) mod download

build: ## build bin/cofferd and bin/coffer
	$(GO) build -trimpath $(BUILDFLAGS) -ldflags '$(LDFLAGS) $(EXTLDFLAGS)' -o bin/cofferd ./cmd/cofferd
	$(GO) build -trimpath $(BUILDFLAGS) -ldflags '$(LDFLAGS) $(EXTLDFLAGS)' -o bin/coffer ./cmd/coffer

man: ## render the man pages into bin/man (coffer(1) and a page per command, cofferd(8), cofferd.hcl(5))
	rm -rf bin/man
	$(GO) run ./scripts/mangen -out bin/man -src docs/man -version $(VERSION)

install: build man ## install binaries, systemd units, sysusers/tmpfiles, examples, completions, man pages (DESTDIR=, PREFIX=/usr/local)
	install -d -m 0755 $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) \
		$(DESTDIR)$(TMPFILESDIR) $(DESTDIR)$(DOCDIR)/examples $(DESTDIR)$(BASHCOMPDIR) \
		$(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(FISHCOMPDIR) \
		$(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8
	install -m 0755 bin/cofferd bin/coffer $(DESTDIR)$(BINDIR)/
	@# The unit names the binary by its installed path.
	sed 's#^ExecStart=/usr/bin/cofferd #ExecStart=$(BINDIR)/cofferd #' systemd/cofferd.service > bin/cofferd.service
	install -m 0644 bin/cofferd.service systemd/cofferd.socket $(DESTDIR)$(UNITDIR)/
	install -m 0644 systemd/coffer.sysusers $(DESTDIR)$(SYSUSERSDIR)/coffer.conf
	install -m 0644 systemd/coffer.tmpfiles $(DESTDIR)$(TMPFILESDIR)/coffer.conf
	install -m 0644 systemd/examples/*.hcl systemd/examples/*.conf $(DESTDIR)$(DOCDIR)/examples/
	install -m 0644 systemd/README.md $(DESTDIR)$(DOCDIR)/systemd.md
	install -m 0644 docs/operations.md docs/devices.md docs/secrets.md $(DESTDIR)$(DOCDIR)/
	bin/coffer completion bash > $(DESTDIR)$(BASHCOMPDIR)/coffer
	bin/coffer completion zsh > $(DESTDIR)$(ZSHCOMPDIR)/_coffer
	bin/coffer completion fish > $(DESTDIR)$(FISHCOMPDIR)/coffer.fish
	install -m 0644 bin/man/man1/*.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 0644 bin/man/man5/*.5 $(DESTDIR)$(MANDIR)/man5/
	install -m 0644 bin/man/man8/*.8 $(DESTDIR)$(MANDIR)/man8/
	install -m 0644 LICENSE docs/licenses.md docs/envelope.md $(DESTDIR)$(DOCDIR)/
	@if [ -z "$(DESTDIR)" ]; then \
		echo "installed. Next (as root): systemd-sysusers coffer.conf && systemd-tmpfiles --create coffer.conf && systemctl daemon-reload,"; \
		echo "then write /etc/coffer/cofferd.hcl (examples in $(DOCDIR)/examples) and see $(DOCDIR)/operations.md"; \
	fi

# The package version (dpkg needs a leading digit): by default VERSION
# without a leading v and with "-" as "+" (v1.2.0-3-gabc1234 gives
# 1.2.0+3+gabc1234), or 0~git<VERSION> before the first tag.
DEB_VERSION ?=

deb: ## build coffer_<version>_amd64.deb with dpkg-deb into bin/ (lintian-checked when lintian is installed)
	rm -rf bin/deb-root
	@# Hardened as Debian builds C: position-independent, full RELRO.
	$(MAKE) --no-print-directory install DESTDIR=$(CURDIR)/bin/deb-root PREFIX=/usr \
		BUILDFLAGS=-buildmode=pie EXTLDFLAGS="-linkmode=external -extldflags=-Wl,-z,relro,-z,now"
	@deb=$$(scripts/mkdeb.sh bin/deb-root '$(or $(DEB_VERSION),$(VERSION))' '$(COMMIT)' bin) && echo "built $$deb" && \
	if ! command -v lintian >/dev/null && [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends lintian >/dev/null 2>&1 || true; \
	fi; \
	if command -v lintian >/dev/null; then \
		lintian --fail-on error,warning "$$deb"; \
	else \
		echo "note: lintian could not be installed (apt-get install lintian): the package was not checked"; \
	fi

run: build ## start a dev node in the foreground (initialised, unsealed, key "dev")
	./bin/cofferd --dev

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

licenses: ## check that every linked module's licence is compatible and listed in docs/licenses.md
	scripts/licenses.sh --check

test: deps lint licenses build ## everything CI runs: lint, race tests (unit + end-to-end), fuzz smoke
	env -u COFFER_SOCKET -u COFFER_FORMAT $(GO) test -race -count=1 -timeout 12m ./...
	# The kube-apiserver's KMS v2 client code against a real cofferd: a module
	# of its own (e2e/kmsv2/go.mod) so k8s.io/apiserver stays out of Coffer's
	# dependencies. Without -race: a race build of k8s.io/apiserver costs
	# over a minute more (docs/kubernetes.md, "Tests").
	cd e2e/kmsv2 && $(GO) vet ./... && env -u COFFER_SOCKET -u COFFER_FORMAT $(GO) test -count=1 -timeout 10m ./...
	# A count, not a duration: a duration that ends while a worker runs an
	# input makes `go test -fuzz` report "context deadline exceeded".
	$(MAKE) --no-print-directory fuzz-smoke FUZZTIME=30000x

test-systemd: build ## only the systemd tests: unit checks, sd_notify/socket activation, cofferd.service under a real systemd (root)
	env -u COFFER_SOCKET -u COFFER_FORMAT $(GO) test -race -count=1 -timeout 10m ./systemd/ ./cmd/cofferd/ \
		&& env -u COFFER_SOCKET -u COFFER_FORMAT $(GO) test -count=1 -timeout 10m -run 'TestE2E_(Notify|SocketActivation|Systemd)' -v ./e2e/

test-unit: ## race tests only
	$(GO) test -race -count=1 ./...

fuzz-smoke: ## run every fuzz target briefly (FUZZTIME, default 5s)
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; fn=$${t##*:}; \
		echo "fuzz $$pkg $$fn ($(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) $$pkg >/tmp/coffer-fuzz.log 2>&1 || { cat /tmp/coffer-fuzz.log; exit 1; }; \
	done

fuzz: ## fuzz every target for longer (FUZZTIME=5m make fuzz)
	$(MAKE) --no-print-directory fuzz-smoke FUZZTIME=$(if $(filter 5s,$(FUZZTIME)),2m,$(FUZZTIME))

bench: ## Go benchmarks (keystore, daemon HTTP path)
	$(GO) test -run '^$$' -bench . -benchmem ./keystore/ ./daemon/

bench-load: build ## coffer bench against a dev node and ceilingd (docs/benchmarks.md)
	./scripts/bench.sh

bench-lean: build ## issue 15: loadgen against ceilingd and a dev node, same run, alternating (docs/benchmarks.md)
	./scripts/bench-lean.sh

bench-kms: build ## KMS v2 plugin (gRPC) next to HTTP wrap/unwrap in the same run (docs/benchmarks.md)
	$(GO) run ./scripts/kmsv2bench -duration 5s

clean: ## remove build output
	rm -rf bin
