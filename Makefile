# loaderd — every task a developer or CI needs, from a fresh machine.
# `make demo` and `make test` install what they need: apt packages when missing
# (as root), Go modules, protobuf plugins, and a .venv with the Python client.

SHELL       := bash
.SHELLFLAGS := -eu -o pipefail -c
GO          ?= go
PYTHON      ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
TOOLS       := $(CURDIR)/.tools/bin
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS     := -X main.version=$(VERSION)
PROTO_DIR   := feed/api/loaderd/feed/v1
PY_PROTO    := clients/python/src/loaderd/_proto
# Pinned generators: the committed stubs are byte-identical wherever they are made.
PROTOC_GEN_GO      := google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
PROTOC_GEN_GO_GRPC := google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
GOLANGCI_LINT      := github.com/golangci/golangci-lint/v2/cmd/golangci-lint@v2.15.0
GO_TEST_FLAGS ?= -race -count=1 -timeout 20m
# Build tags: nolibjpeg where libjpeg-turbo cannot be built against (decided
# after deps ran, so in the recipes; ensure-deps says why).
# NVJPEG=1 adds the GPU decoder (decode/nvjpeg.go: nvJPEG + NPP), which
# needs the CUDA toolkit at CUDA_HOME; without it the build needs no CUDA.
NVJPEG      ?= 0
CUDA_HOME   ?= /usr/local/cuda
GOTAGS       = $$(bash deploy/dev/gotags.sh)$(if $(filter 1,$(NVJPEG)), nvjpeg)
ifeq ($(NVJPEG),1)
export CGO_CFLAGS  := -O2 -g -I$(CUDA_HOME)/include
export CGO_LDFLAGS := -g -L$(CUDA_HOME)/lib64
endif
# Fuzz targets run briefly by `make test` (test-fuzz): package:target.
FUZZ_TARGETS := cmd/loaderd:FuzzLoadConfig decode:FuzzParseHeader decode:FuzzDecode shard:FuzzTarIndex \
                shard:FuzzCSV shard:FuzzJSONLines shard:FuzzNumPy shard:FuzzNumPyZip shard:FuzzParquet
FUZZTIME     ?= 10s

.PHONY: all build demo test test-go check-nvjpeg test-gpu test-py test-fuzz test-deploy protos protos-check lint bench venv deps clean

all: build

deps:
	@bash deploy/dev/ensure-deps.sh

build: deps
	$(GO) build -tags "$(GOTAGS)" -ldflags "$(LDFLAGS)" -o bin/loaderd ./cmd/loaderd
	$(GO) build -o bin/objserver ./tests/objserver

demo: build
	./bin/loaderd demo

# The venv is rebuilt when the client's packaging changes.
$(VENV)/.stamp: clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e 'clients/python[test,dev,torch]'
	touch $@

venv: $(VENV)/.stamp

$(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc:
	GOBIN=$(TOOLS) $(GO) install $(PROTOC_GEN_GO)
	GOBIN=$(TOOLS) $(GO) install $(PROTOC_GEN_GO_GRPC)

# protoc comes from grpcio-tools (pinned in pyproject's dev extra), so one protoc
# version generates both languages and no system protoc is needed.
protos: venv $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc
	PATH=$(TOOLS):$$PATH $(PY) -m grpc_tools.protoc -I feed/api \
	  --go_out=paths=source_relative:feed/api \
	  --go-grpc_out=paths=source_relative:feed/api \
	  $(PROTO_DIR)/*.proto
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m grpc_tools.protoc -I $(PROTO_DIR) \
	  --python_out=$(PY_PROTO) --grpc_python_out=$(PY_PROTO) \
	  --mypy_out=$(PY_PROTO) --mypy_grpc_out=$(PY_PROTO) \
	  $(PROTO_DIR)/*.proto
	# Generated Python imports its siblings as top-level modules; make them relative.
	sed -i -E 's/^import (\w+_pb2)( as \w+)?$$/from . import \1\2/' $(PY_PROTO)/*_pb2_grpc.py $(PY_PROTO)/*_pb2_grpc.pyi

# Fails when the committed stubs differ from what `make protos` makes.
protos-check: protos
	@git diff --exit-code --stat -- feed/api $(PY_PROTO) || \
	  { echo "generated stubs are stale: run 'make protos' and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- feed/api $(PY_PROTO))" || \
	  { echo "generated stubs are not committed: run 'make protos' and commit"; exit 1; }

$(TOOLS)/golangci-lint:
	GOBIN=$(TOOLS) $(GO) install $(GOLANGCI_LINT)

lint: venv $(TOOLS)/golangci-lint
	gofmt -l $$(git ls-files '*.go') | (! grep .) || { echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet -tags "$(GOTAGS)" ./...
	$(GO) vet -tags nolibjpeg ./decode/...
	$(TOOLS)/golangci-lint run --build-tags "$(GOTAGS)" ./...
	$(PY) -m ruff check --config clients/python/pyproject.toml clients/python tests
	$(PY) -m ruff format --check --config clients/python/pyproject.toml clients/python tests
	cd clients/python && ../../$(PY) -m mypy --strict src

# The decoder is tested in both builds: libjpeg-turbo and the pure-Go fallback.
test-go: deps
	$(GO) test -tags "$(GOTAGS)" $(GO_TEST_FLAGS) ./...
	$(GO) test -tags nolibjpeg $(GO_TEST_FLAGS) ./decode/...

# The GPU decoder compiled (not linked) against stub CUDA headers
# (decode/testdata/cuda-stub), so the nvjpeg-tagged code keeps compiling on
# machines without CUDA. It proves the code agrees with the stubs' copies of
# the declarations, not with the real headers, and nothing about a GPU.
check-nvjpeg: deps
	CGO_CFLAGS="-O2 -I$(CURDIR)/decode/testdata/cuda-stub -Wall -Werror -Wno-deprecated-declarations" \
	  $(GO) vet -tags "$(GOTAGS) nvjpeg" ./decode/
	CGO_CFLAGS="-O2 -I$(CURDIR)/decode/testdata/cuda-stub -Wall -Werror -Wno-deprecated-declarations" \
	  $(GO) build -tags "$(GOTAGS) nvjpeg" ./decode/

# On a machine with an NVIDIA GPU and the CUDA toolkit (make test-gpu
# NVJPEG=1): the GPU decoder's conformance suite, its agreement with the CPU
# path, and GPU vs CPU img/s in one run.
test-gpu: deps
	@test "$(NVJPEG)" = 1 || { echo "run: make test-gpu NVJPEG=1 (needs the CUDA toolkit at CUDA_HOME=$(CUDA_HOME))"; exit 1; }
	$(GO) test -tags "$(GOTAGS)" -count=1 -v -run 'GPU|Discover|NewAuto' ./decode/
	$(GO) test -tags "$(GOTAGS)" -run '^$$' -bench '^BenchmarkDecoders$$' -benchtime 8192x -v ./decode/

# Each parser of outside input fuzzed briefly (go test runs the seeds anyway),
# seeded with the corpora; minimizing new inputs would spend the whole budget
# on a few large seeds.
test-fuzz: deps
	bash deploy/dev/fuzz.sh $(FUZZTIME) "$(GOTAGS)" $(FUZZ_TARGETS)

test-py: build venv
	LOADERD_BIN=$(CURDIR)/bin/loaderd $(PY) -m pytest -q -c clients/python/pyproject.toml --rootdir . clients/python/tests tests

# The systemd unit, the Kubernetes manifests and the Dockerfile, with real tools.
test-deploy: build venv
	LOADERD_BIN=$(CURDIR)/bin/loaderd VENV=$(VENV) bash deploy/dev/check-deploy.sh

test: protos-check lint check-nvjpeg test-go test-fuzz test-py test-deploy

bench: build venv
	$(GO) test -tags "$(GOTAGS)" -run '^$$' -bench . -benchtime 3x ./shard/... ./prefetch/... ./cache/... ./feed/...
	LOADERD_BIN=$(CURDIR)/bin/loaderd $(PY) tests/bench/run.py

clean:
	rm -rf bin .tools $(VENV)
