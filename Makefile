# The README's two commands. Each sets up .venv when it is missing or older than the install
# inputs, so a repeated call costs seconds.
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint gpu-check gpu-wheels

$(STAMP): pyproject.toml constraints-cpu.txt scripts/install.sh
	bash scripts/install.sh

# The demo's run folders are its own scratch space: each `make demo` starts over.
demo: $(STAMP)
	rm -rf runs/demo runs/demo-sft runs/demo-rm
	$(VENV)/bin/tandem pipeline configs/demo.yaml

# Two pytest workers, each with its own local Ray: one test file alone keeps the two cores only
# 62-70% busy (roles start and generate on one thread each). More workers than cores only multiply
# memory (each end-to-end job is several processes). Files go to workers in collection order
# (tests/conftest.py puts the longest first), not xdist's by number of tests.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25

bench: $(STAMP)
	$(VENV)/bin/python bench/run.py

LINTED := tandem tests bench scripts
lint: $(STAMP)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/ruff check $(LINTED)

# The GPU check runs on a machine without .venv (torch and transformers preinstalled, the rest as
# wheels from `make gpu-wheels`; see the README's GPU section). `make gpu-check ARGS=--cpu` is the dry run.
GPU_PY := $(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,python3)
gpu-check:
	$(GPU_PY) scripts/gpu_check.py $(ARGS)

gpu-wheels: $(STAMP)
	bash scripts/gpu_wheels.sh
