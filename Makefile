# bimaco-deploy: install, build, test, demo, bench.
# `make test` on a fresh machine installs everything the project needs first.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# torch first, so that `pip install -e .` keeps it. What TORCH_SPEC resolves to is pip's choice:
# from PyPI on Linux x86-64 it is the multi-GB CUDA build; where pip.conf names a CPU wheel source
# (our development and CI machines) it is the CPU build. Choose explicitly with an index of your own,
# e.g. `make install TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu` (see README).
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
STAMP := build/.installed

.PHONY: install system-deps build test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PIP) install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX_URL),--index-url "$(TORCH_INDEX_URL)")
	$(PIP) install -q -e ".[dev,calib,serve]"
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
