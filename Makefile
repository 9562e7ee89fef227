# Two commands a newcomer needs: `make demo` and `make test`. Both create .venv and install.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint format fuzz cpu-models bench clean

install: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[all,dev]"
	touch $(STAMP)

demo: install
	$(PY) -m ecograph.demo

# The suite runs in parallel, one pytest-xdist worker per core (at most 4: each worker holds
# torch, TVM and its models in memory); a test module stays on one worker, so its module-scoped
# fixtures (the TVM conformance column: minutes) are built once. TEST_JOBS=1 runs it serially.
TEST_JOBS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)

test: install
	$(PY) -m pytest -q -n $(TEST_JOBS) --dist loadscope $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check ecograph tests bench docs
	$(VENV)/bin/ruff format --check ecograph tests bench docs
	$(VENV)/bin/pyright

format: install
	$(VENV)/bin/ruff check --fix ecograph tests bench docs
	$(VENV)/bin/ruff format ecograph tests bench docs

fuzz: install
	ECOGRAPH_FUZZ_EXAMPLES=20000 $(PY) -m pytest -q tests/ir/test_fuzz.py tests/passes/test_fuzz.py
	ECOGRAPH_COMPILED_FUZZ_EXAMPLES=500 $(PY) -m pytest -q tests/backends/test_compiled_fuzz.py

# ONNX's node tests through TVM builds for every x86 CPU model this host can run (~5 min each).
CPU_MODELS ?= x86:generic x86:haswell x86:skylake-avx512 x86:znver3 x86:znver4 x86
# A model this CPU cannot run is skipped (exit code 2), any failure stops the loop.
cpu-models: install
	@for t in $(CPU_MODELS); do echo "== $$t"; \
	  $(PY) -m ecograph.conformance --backend tvm --target $$t > .cpu-models.log 2>&1; rc=$$?; \
	  grep -E "^(claimed ops|skipped)" .cpu-models.log; \
	  if [ $$rc -ne 0 ] && [ $$rc -ne 2 ]; then cat .cpu-models.log; exit $$rc; fi; done

bench: install
	$(PY) bench/run.py
	$(PY) bench/quant_accuracy.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
