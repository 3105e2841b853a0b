# bimaco-deploy: install, build, test, demo, bench.
# `make test` on a fresh machine installs everything the project needs first.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# torch's CPU build first: a plain `torch` requirement would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP := build/.installed

.PHONY: install build test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev,calib,serve]"
	@mkdir -p build && touch $(STAMP)

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
