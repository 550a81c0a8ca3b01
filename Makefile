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

bench: $(STAMP)
	$(BIN)/python bench/bench_models.py
	$(BIN)/python bench/bench_predict.py --quick

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .mypy_cache .ruff_cache
