# Two commands for a new user (see README):  make demo   and   make test
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# CPU build of torch, installed only where no torch is importable yet: an existing CUDA build is kept,
# and a machine without torch never resolves "torch" to the registry's CUDA wheels.
TORCH_CPU_SPEC ?= torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: install install-test demo test lint bench mutation

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_CPU_SPEC)" \
	  || $(PIP) install "$(TORCH_CPU_SPEC)" --index-url $(TORCH_CPU_INDEX)
	$(PIP) install -e .

install-test:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_CPU_SPEC)" \
	  || $(PIP) install "$(TORCH_CPU_SPEC)" --index-url $(TORCH_CPU_INDEX)
	$(PIP) install -e ".[test]"

demo: install
	$(PYTHON) -m lpc_geom demo

test: install-test
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q -n auto  # one process per core: the fault tests spend most of their time in subprocesses

lint:
	$(PYTHON) -m ruff check .

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
