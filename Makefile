# warren's build entry points. Every target is a thin wrapper: the commands
# themselves are in scripts/ and .ci/, so that they can be run without make.

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
export VERSION COMMIT

.PHONY: build release image test bench soak ci

# build: a static warren for this machine, with its version.
build:
	scripts/build.sh binary warren

# release: static binaries for linux/amd64 and linux/arm64 in dist/, with SHA256SUMS.
release:
	scripts/build.sh release dist

# image: the container image, warren:local.
image:
	docker build -t warren:local --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) .

# test: the README's test command.
test:
	go test -race ./...

# bench: the benchmark, warren against a kernel TUN (as root; bench/RESULTS.md).
# Flags go in BENCHFLAGS: make bench BENCHFLAGS='-phases download -runs 3'.
bench:
	go run ./bench $(BENCHFLAGS)

# soak: minutes of clients (TCP, UDP, DNS) across forced reconnects; at the end
# goroutines, open files and heap must be back at their baseline. Not part of
# the default test run. SOAKFLAGS='-soak.duration 10m -soak.clients 100'.
soak:
	go test -tags soak -count=1 -run TestSoak -v -timeout 60m ./cmd/warren $(SOAKFLAGS)

# ci: what CI runs (installs the real-peer suite's packages when root).
ci:
	.ci/run
