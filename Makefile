# bimaco-deploy: install, build, test, demo, bench.
# `make test` on a fresh machine installs everything the project needs first.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# torch's CPU build first: a plain `torch` requirement would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP := build/.installed

.PHONY: install system-deps build test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev,calib]"
	@mkdir -p build && touch $(STAMP)

# System tools for the CPU tests (host and AArch64 cross g++, qemu-user-static), from apt
# where missing, as root; .ci/run runs this before `make test`. Without them the NEON test skips.
system-deps:
	.ci/install-cpu-deps

build: install
	$(PYTHON) -m bimaco_deploy.plugins.native build

test: build
	$(PYTHON) -m pytest -q

demo: build
	$(PYTHON) -m bimaco_deploy.demo

# Published-model benchmarks on this machine (a few minutes); see BENCHMARKS.md.
bench: build
	$(PYTHON) benchmarks/bench_layers.py --repeats 15 --threads 2
	$(PYTHON) -m bimaco_deploy.cli bench --backend torch --config bimacosr --repeats 7 --threads 2

clean:
	rm -rf build .pytest_cache
