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
# for the device tests).
APT_PKGS   := gcc libc6-dev softhsm2 opensc swtpm swtpm-tools tpm2-tools curl

# Fuzz targets: package, target.
FUZZ_TARGETS := \
	./keystore/shamir:FuzzParse \
	./keystore/shamir:FuzzCombine \
	./keystore:FuzzParseCiphertext \
	./keystore:FuzzDecodeCommand \
	./daemon:FuzzDecodeRequest \
	./daemon/config:FuzzParseConfig

.PHONY: help deps build run test test-unit lint fuzz fuzz-smoke bench bench-load clean

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

build: ## build bin/cofferd and bin/coffer
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/cofferd ./cmd/cofferd
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/coffer ./cmd/coffer

run: build ## start a dev node in the foreground (initialised, unsealed, key "dev")
	./bin/cofferd --dev

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

test: deps lint build ## everything CI runs: lint, race tests (unit + end-to-end), fuzz smoke
	env -u COFFER_SOCKET -u COFFER_FORMAT $(GO) test -race -count=1 -timeout 12m ./...
	$(MAKE) --no-print-directory fuzz-smoke FUZZTIME=3s

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

clean: ## remove build output
	rm -rf bin
