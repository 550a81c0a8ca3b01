# The two commands: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out

.PHONY: demo test lint typecheck bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -e '.[dev]'
	$(BIN)/python -c "import torch, torchvision, avalanche, monai, nibabel, SimpleITK; print('torch', torch.__version__, '| monai', monai.__version__, '| avalanche ok')"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/medattn demo --out $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/python -m pytest -q --timeout=900

lint: $(STAMP)
	$(BIN)/ruff check medattn tests bench
	$(BIN)/ruff format --check medattn tests bench
	$(BIN)/mypy

# The benchmark suite (5.0 minutes measured on 2 idle cores, docs/benchmarks.md): one table, JSON in runs/bench/run_all.json.
# `make bench BENCH_ARGS=--quick` for the short version; bench/bench_models.py (model costs) runs on its own.
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .mypy_cache .ruff_cache
