# Two commands for a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

LATEST := .venv-latest

.PHONY: venv test test-latest lint typecheck unit demo clean fuzz docs

$(STAMP): requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests examples fuzz bench tools docs/snippets
	$(BIN)/ruff format --check src tests examples fuzz bench tools docs/snippets

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

test: lint typecheck unit

# The suite against the newest releases of the libraries users combine with torchweights (numpy, safetensors,
# zlib-ng: the pins of requirements-dev.txt dropped, upgraded on every run), in its own venv; torch stays the
# pinned CPU build, test tools stay pinned. CI runs it after `make test` (.ci/run).
test-latest:
	test -x $(LATEST)/bin/python || $(PY) -m venv $(LATEST)
	sed -E 's/^(numpy|safetensors|zlib-ng)==.*/\1/' requirements-dev.txt > $(LATEST)/requirements.txt
	$(LATEST)/bin/pip install -q --upgrade -r $(LATEST)/requirements.txt
	$(LATEST)/bin/pip install -q --no-deps --no-build-isolation -e .
	$(LATEST)/bin/pip list --format=freeze | grep -i -E '^(torch|numpy|safetensors|zlib.ng)=='
	$(LATEST)/bin/pytest

demo: $(STAMP)
	$(BIN)/python examples/demo.py

# The docs site (mkdocs.yml, docs/) into site/, offline, warnings as errors; `$(BIN)/mkdocs serve` to preview.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Longer fuzzing (about 45 minutes on 2 cores): the Hypothesis fuzz suites of the readers with 2000 examples per
# test, the pipeline's (tests/fuzz: pickle machine, load_into, convert/diff/verify, CLI, writers) with 500 at random
# seeds, then atheris over the readers and the scanner if it installs (fuzz/requirements.txt; skipped otherwise).
fuzz: $(STAMP)
	TW_FUZZ_EXAMPLES=2000 $(BIN)/pytest tests/test_properties.py tests/test_fuzz_formats.py -q
	TW_FUZZ_EXAMPLES=500 TW_FUZZ_DEADLINE_MS=0 $(BIN)/pytest tests/fuzz -q
	$(BIN)/python -c "import atheris" 2>/dev/null || $(BIN)/pip install -q -r fuzz/requirements.txt || true
	if $(BIN)/python -c "import atheris" 2>/dev/null; then $(BIN)/python fuzz/atheris_scan.py -runs=20000; \
	else echo "atheris is not installed: skipped the coverage-guided run (see fuzz/atheris_scan.py)"; fi

# Load speed against torch.load, safetensors and the hardware (minutes; not a test). Two modes: warm (bench/run.py:
# one-time imports paid before the clock) and fresh (bench/fresh.py: import torchweights + the first call timed, as a
# script meets it). TW_BENCH_SIZES=1 for 1 GB only, TW_BENCH_DIR for where the generated checkpoints go. TW_BENCH_SCALE=1 adds the scale case
# (bench/scale.py: a checkpoint of 60% of RAM, each load in a memory-limited child; writes ~2x that to disk).
.PHONY: bench
bench: $(STAMP)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/fresh.py
	$(BIN)/python bench/align.py
	OMP_NUM_THREADS=1 $(BIN)/python bench/distributed.py
	if [ "$$TW_BENCH_SCALE" = 1 ]; then $(BIN)/python bench/scale.py; fi

clean:
	rm -rf $(VENV) $(LATEST) build site src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
