# Small verbs; the README's commands are these. Every verb sets up what it needs from nothing:
# a local virtual environment (.venv) with the package and its declared dependencies.
PYTHON ?= python3
SOAK_MINUTES ?= 30
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Go: the protoc plugins are pinned here and installed into ./bin (gitignored). protoc-gen-go's version is
# that of google.golang.org/protobuf in go/go.mod (tests/test_go.py checks), so the code it writes matches the
# runtime it runs on. A new stamp name per version pair makes a version bump reinstall.
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
GO_TOOLS := bin/.go-tools-$(PROTOC_GEN_GO_VERSION)-$(PROTOC_GEN_GO_GRPC_VERSION)
# -count=1: the Go tests talk to the Python server, whose changes go's test cache cannot see.
GO_TEST  := cd go && STREAMER_BIN=$(CURDIR)/$(BIN)/streamer go test -count=1 ./...

.PHONY: serve test proto lint bench bench-quick soak clean
.PHONY: go-tools go-test

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

serve: $(STAMP)  ## run the service with embedded defaults (port 9999)
	$(BIN)/streamer serve

test: $(STAMP) go-tools  ## the whole test suite
	$(BIN)/pytest
	$(GO_TEST)

proto: $(STAMP) go-tools  ## regenerate the committed bindings from protos/outliers.proto
	$(BIN)/python protos/generate.py

lint: $(STAMP)
	$(BIN)/flake8 streamer tests benchmarks protos
	cd go && go vet ./... && { unformatted=$$(gofmt -l .); test -z "$$unformatted" || { echo "gofmt -l: $$unformatted"; exit 1; }; }

bench: $(STAMP)  ## full benchmark run (about 10 minutes)
	$(BIN)/python -m benchmarks

bench-quick: $(STAMP)  ## short benchmark run (about 2 minutes)
	$(BIN)/python -m benchmarks --quick

soak: $(STAMP)  ## the server's RSS under SOAK_MINUTES (30) of mixed load and an idle tail: benchmarks/results/soak/
	$(BIN)/python -m benchmarks.soak --minutes $(SOAK_MINUTES) --out benchmarks/results/soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
	rm -rf bin

go-tools: $(GO_TOOLS)  ## install the pinned protoc-gen-go and protoc-gen-go-grpc into ./bin

$(GO_TOOLS):
	GOBIN=$(CURDIR)/bin go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(CURDIR)/bin go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	touch $@

go-test: $(STAMP)  ## only the Go tests (against the real Python server)
	$(GO_TEST)
