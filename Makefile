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

.PHONY: setup demo test bench conformance bundle qemu-sysroot lock clean

setup: .venv/.installed node_modules/.installed .apt-installed bundle qemu-sysroot

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

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# The local-mode demo on embedded defaults.
demo: setup
	$(PY) local_mode.py

test: setup
	$(PY) -m pytest -q

# The device bundles (runtime library, FFI, runtime package; no compiler) the Greengrass
# component ships. aarch64 comes from that architecture's wheels of the pinned versions.
BUNDLES := build/bundle/neo-edge-runtime-x86_64.zip build/bundle/neo-edge-runtime-aarch64.zip
bundle: $(BUNDLES)

$(BUNDLES) &: .venv/.installed .apt-installed $(wildcard edge_runtime/neo_edge_runtime/*.py) \
		edge_runtime/neo_edge_runtime/compile/bundle.py lambda/edge_inference/edge_inference.py
	$(PY) -m neo_edge_runtime.compile.bundle --arch x86_64 --arch aarch64

# An aarch64 sysroot (Debian arm64 packages through a private apt configuration, the aarch64
# numpy wheel) in which qemu-user runs the aarch64 bundle: tests/edge_runtime/test_qemu_aarch64.py.
qemu-sysroot: build/qemu-aarch64/.assembled

build/qemu-aarch64/.assembled: scripts/qemu-aarch64-sysroot.sh requirements.lock | .venv/.installed .apt-installed
	scripts/qemu-aarch64-sysroot.sh build/qemu-aarch64

# Slow work (tuning, the model zoo against ONNX Runtime): not part of the tests.
bench: setup
	$(PY) -m benchmarks.run

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

clean:
	rm -rf .venv node_modules cdk.out .apt-installed build *.egg-info
