# The README's two commands. Each sets up .venv when it is missing or older than the install
# inputs, so a repeated call costs seconds.
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint

$(STAMP): pyproject.toml constraints-cpu.txt scripts/install.sh
	bash scripts/install.sh

# The demo's run folders are its own scratch space: each `make demo` starts over.
demo: $(STAMP)
	rm -rf runs/demo runs/demo-sft runs/demo-rm
	$(VENV)/bin/tandem pipeline configs/demo.yaml

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python bench/run.py

lint: $(STAMP)
	$(VENV)/bin/ruff check tandem tests
