# Small verbs; the README's commands are these. Every verb sets up what it needs from nothing: a local
# virtual environment (.venv) with the package, its runtime dependencies and only the extras that verb needs.
PYTHON ?= python3
SOAK_MINUTES ?= 30
VENV   := .venv
BIN    := $(VENV)/bin
# One stamp per set of dependencies: `make serve` installs the runtime ones only, `make test` adds the dev and
# bench extras (the benchmark harness has a test), `make bench` only bench. Each reinstalls when setup.cfg or
# pyproject.toml changes.
VENV_STAMP    := $(VENV)/.created
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP     := $(VENV)/.installed-dev
BENCH_STAMP   := $(VENV)/.installed-bench

# Go: the protoc plugins are pinned here and installed into ./bin (gitignored). protoc-gen-go's version is
# that of google.golang.org/protobuf in go/go.mod (tests/test_go.py checks), so the code it writes matches the
# runtime it runs on. A new stamp name per version pair makes a version bump reinstall.
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
GO_TOOLS := bin/.go-tools-$(PROTOC_GEN_GO_VERSION)-$(PROTOC_GEN_GO_GRPC_VERSION)
# grpcurl, the reflection client of tests/test_reflection.py (it describes and calls the server as a user would).
GRPCURL_VERSION := v1.9.4
GRPCURL := bin/.grpcurl-$(GRPCURL_VERSION)
# -count=1: the Go tests talk to the Python server, whose changes go's test cache cannot see.
GO_TEST  := cd go && STREAMER_BIN=$(CURDIR)/$(BIN)/streamer go test -count=1 ./...

.DEFAULT_GOAL := help
.PHONY: help serve test proto lint bench bench-quick soak fuzz clean
.PHONY: go-tools grpcurl go-test redis-server alertmanager chromium valgrind

help:  ## list the verbs
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z-]*:.*## / {printf "  make %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	touch $@

$(RUNTIME_STAMP): $(VENV_STAMP) setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(DEV_STAMP): $(RUNTIME_STAMP)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

$(BENCH_STAMP): $(RUNTIME_STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	touch $@

serve: $(RUNTIME_STAMP)  ## run the service with embedded defaults (port 9999); installs the runtime dependencies only
	$(BIN)/streamer serve

# The wire tests and the fuzz targets run twice: in the normal build, then in the checked one, where every load
# checks its bounds and every decoder loop its progress (streamer/wire/primitives.py), in its own numba cache.
# (the fuzz run itself is plain Python in both: only the replay through the compiled decoder runs again)
WIRE_TESTS := tests/test_wire.py tests/test_wire_layout.py tests/test_wire_checked.py tests/test_series.py tests/test_fused.py \
	tests/test_fuzz.py::test_the_corpus_and_every_regression_read_as_protobuf_reads_them

# The checked build's compile (about 2 minutes on one core) runs beside the Python tests, into its own numba
# cache; its tests then run beside the Go tests. The three must pass; a failing part does not stop the others.
WARM_CHECKED := STREAMER_WIRE_CHECKED=1 $(BIN)/python -c "from streamer import server; server._compile_kernels()"
test: $(DEV_STAMP) $(BENCH_STAMP) go-tools grpcurl redis-server alertmanager chromium  ## the whole test suite (Python, then the checked wire build and Go against the real server)
	warm=$$(mktemp); log=$$(mktemp); ($(WARM_CHECKED)) > $$warm 2>&1 & warming=$$!; \
	$(BIN)/pytest; tests=$$?; \
	wait $$warming || cat $$warm; rm -f $$warm; \
	($(GO_TEST)) > $$log 2>&1 & go=$$!; \
	STREAMER_WIRE_CHECKED=1 $(BIN)/pytest -q $(WIRE_TESTS); checked=$$?; \
	wait $$go; gone=$$?; cat $$log; rm -f $$log; \
	[ $$tests -eq 0 ] && [ $$checked -eq 0 ] && [ $$gone -eq 0 ]

# Coverage-guided fuzzing of the decoder (atheris) for FUZZ_SECONDS; a crash or a hang (-timeout) is saved in
# tests/fuzz/regressions/, which `make test` replays. The grown corpus (.fuzz/) is then replayed through the
# compiled decoder in the checked build.
FUZZ_SECONDS ?= 600
fuzz: $(DEV_STAMP)  ## fuzz the request decoder for FUZZ_SECONDS (600) against the protobuf library
	mkdir -p .fuzz/corpus
	$(BIN)/python tests/fuzz/fuzz_decode.py -dict=tests/fuzz/outliers.dict -max_total_time=$(FUZZ_SECONDS) \
		-timeout=10 -print_final_stats=1 -artifact_prefix=tests/fuzz/regressions/ .fuzz/corpus tests/fuzz/corpus
	STREAMER_WIRE_CHECKED=1 $(BIN)/python tests/fuzz/replay.py .fuzz/corpus tests/fuzz/corpus tests/fuzz/regressions

proto: $(DEV_STAMP) go-tools  ## regenerate the committed bindings from protos/outliers.proto
	$(BIN)/python protos/generate.py

lint: $(DEV_STAMP)  ## flake8, go vet and gofmt
	$(BIN)/flake8 streamer tests benchmarks protos
	cd go && go vet ./... && { unformatted=$$(gofmt -l .); test -z "$$unformatted" || { echo "gofmt -l: $$unformatted"; exit 1; }; }

bench: $(BENCH_STAMP) valgrind  ## full benchmark run (about 40 minutes): the main run, issue 23's targets, the page's cost, a million series
	$(BIN)/python -m benchmarks
	$(BIN)/python -m benchmarks.targets
	$(BIN)/python -m benchmarks.pin_bench
	$(BIN)/python -m benchmarks.page_bench --variants "no page" "page open"
	$(BIN)/python -m benchmarks.page_callgrind
	$(BIN)/python -m benchmarks.sink_bench
	$(BIN)/python -m benchmarks.million_bench
	$(BIN)/python -m benchmarks.million_load

bench-quick: $(BENCH_STAMP)  ## short benchmark run (about 90 s)
	$(BIN)/python -m benchmarks --quick

soak: $(BENCH_STAMP)  ## the server's RSS under SOAK_MINUTES (30) of mixed load and an idle tail: benchmarks/results/soak/
	$(BIN)/python -m benchmarks.soak --minutes $(SOAK_MINUTES) --out benchmarks/results/soak $(SOAK_ARGS)

clean:  ## remove .venv, build outputs and ./bin
	rm -rf $(VENV) build dist *.egg-info
	rm -rf bin

go-tools: $(GO_TOOLS)  ## install the pinned protoc-gen-go and protoc-gen-go-grpc into ./bin

$(GO_TOOLS):
	GOBIN=$(CURDIR)/bin go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(CURDIR)/bin go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	touch $@

# A real redis-server for tests/test_redis.py and the Redis store's contract tests (Debian's package).
redis-server:  ## install Debian's redis-server when it is missing (the Redis tests start their own on a free port)
	@command -v redis-server >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }
	@command -v redis-server >/dev/null || { echo "redis-server could not be installed"; exit 1; }

# valgrind's callgrind for benchmarks/page_callgrind.py (and callgrind_bench.py): instruction counts, steady here.
valgrind:  ## install Debian's valgrind when it is missing (the page's cost in instructions, in make bench)
	@command -v valgrind >/dev/null && command -v callgrind_control >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; }
	@command -v valgrind >/dev/null && command -v callgrind_control >/dev/null || { echo "valgrind could not be installed"; exit 1; }

# A real Alertmanager for tests/test_sinks.py and tests/test_alerts.py (Debian's 0.25; the tests start their own).
alertmanager:  ## install Debian's prometheus-alertmanager when it is missing (the alert tests start their own)
	@command -v prometheus-alertmanager >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus-alertmanager >/dev/null; }
	@command -v prometheus-alertmanager >/dev/null || { echo "prometheus-alertmanager could not be installed"; exit 1; }

# A real browser for tests/test_page_browser.py: Debian's chromium, headless, and chromium-driver for Selenium.
chromium:  ## install Debian's chromium and chromium-driver when missing (the page's browser tests)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { echo "chromium and chromium-driver could not be installed"; exit 1; }

grpcurl: $(GRPCURL)  ## install the pinned grpcurl into ./bin (for the reflection tests)

$(GRPCURL):
	GOBIN=$(CURDIR)/bin go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)
	touch $@

go-test: $(RUNTIME_STAMP)  ## only the Go tests (against the real Python server)
	$(GO_TEST)
