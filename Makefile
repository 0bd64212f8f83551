# Two commands for a new user (see README):  make demo   and   make test
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# CPU build of torch, installed only where no torch is importable yet: an existing CUDA build is kept,
# and a machine without torch never resolves "torch" to the registry's CUDA wheels.
TORCH_CPU_SPEC ?= torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: install install-test install-docs demo test lint docs results bench mutation

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_CPU_SPEC)" \
	  || $(PIP) install "$(TORCH_CPU_SPEC)" --index-url $(TORCH_CPU_INDEX)
	$(PIP) install -e .

install-test:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_CPU_SPEC)" \
	  || $(PIP) install "$(TORCH_CPU_SPEC)" --index-url $(TORCH_CPU_INDEX)
	$(PIP) install -e ".[test]"  # the test extra includes the docs extra: tests/test_docs.py builds the site

install-docs:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_CPU_SPEC)" \
	  || $(PIP) install "$(TORCH_CPU_SPEC)" --index-url $(TORCH_CPU_INDEX)
	$(PIP) install -e ".[docs]"

demo: install
	$(PYTHON) -m lpc_geom demo

test: install-test
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q -n auto  # one process per core: the fault tests spend most of their time in subprocesses

lint:
	$(PYTHON) -m ruff check .

# The documentation, strict: every page re-read (-E), every warning an error (-W); see docs/guide/documentation.md
docs: install-docs
	rm -rf docs/_build/html  # pages of modules that no longer exist would stay and keep their old links
	$(PYTHON) -m sphinx -W -E -q -b html docs docs/_build/html

# Every benchmark with its defaults, each writing its results fragment into docs/results (long: the ablation
# and the comparison grid train for tens of minutes). A benchmark that misses a target or fails is listed at
# the end; the others still run.
BENCHMARKS = $(filter-out benchmarks/_%,$(wildcard benchmarks/*.py))
results:
	@failed=""; for bench in $(BENCHMARKS) "benchmarks/bench_analyze.py --ratios"; do \
	  echo "== $(PYTHON) $$bench"; $(PYTHON) $$bench || failed="$$failed; $$bench"; done; \
	  if [ -n "$$failed" ]; then echo "non-zero exit (a missed target or a failure)$$failed"; exit 1; fi

bench:
	$(PYTHON) benchmarks/bench_ablation.py

# Mutation testing of the core modules (slow; not part of `make test`; see docs/MUTATION.md).
# One module or folder at a time:  make mutation MODULE=lpc_geom/train/schedules.py
MUTMUT ?= mutmut
MUTATION_JOBS ?= 2
MUTATION_GLOB = $(if $(MODULE),"$(subst /,.,$(patsubst %/,%,$(MODULE:.py=))).*")

mutation:
	nice -n 10 $(MUTMUT) run --max-children $(MUTATION_JOBS) $(MUTATION_GLOB); \
	  status=$$?; $(PYTHON) tools/mutation_score.py $(MODULE) --survivors; exit $$status
