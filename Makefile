# neo-edge: the two commands are `make demo` (the local-mode main job) and `make test`.
# Both install what they need first: Debian cross toolchains, a .venv with the pinned
# Python packages, and the pinned npm CDK CLI.

SHELL := /bin/bash
PY    := .venv/bin/python
PIP   := .venv/bin/pip
APT_PACKAGES := gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf qemu-user
SUDO  := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# jsii refuses to be quiet about node 20 unless its major version is listed here.
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20

.PHONY: setup demo test bench bench-telemetry conformance deploy-local gpu-check bundle qemu-sysroot lock lock-checkov clean

setup: .venv/.installed .venv-checkov/.installed node_modules/.installed .apt-installed bundle \
	qemu-sysroot

.apt-installed:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
	@touch $@

.venv/.installed: pyproject.toml requirements.lock
	python3.11 -m venv .venv
	$(PIP) install -q --disable-pip-version-check -r requirements.lock
	$(PIP) install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

# checkov, the IaC scanner the tests run over the reference app, in a venv of its own:
# it pins boto3 (and more) to versions that clash with requirements.lock.
.venv-checkov/.installed: requirements-checkov.lock
	rm -rf .venv-checkov && python3.11 -m venv .venv-checkov
	.venv-checkov/bin/pip install -q --disable-pip-version-check -r requirements-checkov.lock
	@touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# The local-mode demo on embedded defaults.
demo: setup
	$(PY) local_mode.py

# One worker per core (pytest-xdist), each test file on one worker: a file's module
# fixtures (compiled models, synthesized apps) are built once. On the 2-core build
# machine the suite took 12.5 minutes this way, about 29 one file after another; tests
# assert no timings, so sharing the cores changes nothing they check.
test: setup
	$(PY) -m pytest -q -n auto --dist loadfile

# The device bundles (runtime library, FFI, runtime package; no compiler) the Greengrass
# component ships. aarch64 comes from that architecture's wheels of the pinned versions.
# The -cuda bundles add TVM's CUDA runtime module, for NVIDIA targets.
BUNDLES := build/bundle/neo-edge-runtime-x86_64.zip build/bundle/neo-edge-runtime-aarch64.zip \
	build/bundle/neo-edge-runtime-x86_64-cuda.zip build/bundle/neo-edge-runtime-aarch64-cuda.zip
bundle: $(BUNDLES)

$(BUNDLES) &: .venv/.installed .apt-installed $(wildcard edge_runtime/neo_edge_runtime/*.py) \
		edge_runtime/neo_edge_runtime/compile/bundle.py lambda/edge_inference/edge_inference.py
	$(PY) -m neo_edge_runtime.compile.bundle --arch x86_64 --arch aarch64
	$(PY) -m neo_edge_runtime.compile.bundle --arch x86_64 --arch aarch64 --cuda

# An aarch64 sysroot (Debian arm64 packages through a private apt configuration, the aarch64
# numpy wheel) in which qemu-user runs the aarch64 bundle: tests/edge_runtime/test_qemu_aarch64.py.
qemu-sysroot: build/qemu-aarch64/.assembled

build/qemu-aarch64/.assembled: scripts/qemu-aarch64-sysroot.sh requirements.lock | .venv/.installed .apt-installed
	scripts/qemu-aarch64-sysroot.sh build/qemu-aarch64

# `cdk deploy` of the reference app into moto's server mode, then `cdk destroy`: the CLI
# path, every asset published, every template accepted (scripts/deploy-local.sh).
deploy-local: setup
	scripts/deploy-local.sh build/deploy-local

# On a machine with an NVIDIA GPU (compute capability 7.5+, CUDA 13's runtime): compile for it
# and run the model from the CUDA bundle. Skipped, not failed, where there is no GPU.
gpu-check: setup
	$(PY) -m pytest -q -m gpu -rs tests/edge_runtime/test_gpu.py

# Slow work (tuning; the model zoo and the full-size corpus of exported models against
# ONNX Runtime, with the geometric mean of TVM/ORT): not part of the tests.
bench: setup
	$(PY) -m benchmarks.run

# The telemetry path's throughput here (device code -> moto's Firehose -> the metrics
# transform) and its cost per million inferences at list prices: benchmarks/telemetry.py.
# N=... sets the number of inferences (default 100000).
bench-telemetry: .venv/.installed
	$(PY) -m benchmarks.telemetry $(if $(N),--n $(N))

# ONNX's backend test suite on the edge runtime and on ONNX Runtime (10-15 minutes on
# 2 cores): benchmarks/results/conformance.md.
conformance: setup
	$(PY) -m benchmarks.conformance

# Rewrites requirements.lock from pyproject.toml's pins (run after changing a pin).
lock:
	rm -rf .venv-lock && python3.11 -m venv .venv-lock
	.venv-lock/bin/pip install -q --disable-pip-version-check setuptools==80.9.0 -e '.[dev,torch]'
	.venv-lock/bin/pip freeze --all --exclude-editable | grep -v "^pip==" | grep -v '^-e' > requirements.lock
	rm -rf .venv-lock

# Rewrites requirements-checkov.lock for the checkov version named in it.
lock-checkov:
	rm -rf .venv-lock && python3.11 -m venv .venv-lock
	.venv-lock/bin/pip install -q --disable-pip-version-check \
		"$$(grep -m1 '^checkov==' requirements-checkov.lock)"
	{ grep '^#' requirements-checkov.lock; .venv-lock/bin/pip freeze; } > requirements-checkov.lock.new
	mv requirements-checkov.lock.new requirements-checkov.lock
	rm -rf .venv-lock

clean:
	rm -rf .venv .venv-checkov node_modules cdk.out .apt-installed build *.egg-info
