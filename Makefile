# Two commands a newcomer needs: `make demo` and `make test`. Both create .venv and install.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint format fuzz bench clean

install: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[all,dev]"
	touch $(STAMP)

demo: install
	$(PY) -m ecograph.demo

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check ecograph tests bench docs
	$(VENV)/bin/ruff format --check ecograph tests bench docs
	$(VENV)/bin/pyright

format: install
	$(VENV)/bin/ruff check --fix ecograph tests bench docs
	$(VENV)/bin/ruff format ecograph tests bench docs

fuzz: install
	ECOGRAPH_FUZZ_EXAMPLES=20000 $(PY) -m pytest -q tests/ir/test_fuzz.py tests/passes/test_fuzz.py

bench: install
	$(PY) bench/run.py
	$(PY) bench/quant_accuracy.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
