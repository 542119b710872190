# Two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Rules run `python -m hypersparse`: the venv first on PATH gives them its python (SLURM jobs too).
export PATH := $(CURDIR)/$(BIN):$(PATH)
STAMP  := $(VENV)/.installed
CORES  ?= all

.PHONY: demo test lint bench gpu-suite estimate status report clean-results venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml --workflow-profile workflow/profiles/default

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/snakefmt --check workflow
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/snakefmt --check workflow
	$(BIN)/snakemake --lint --configfile config/demo.yaml

report: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml --report results/report.html

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_hs_overhead.py
	$(BIN)/python benchmarks/bench_data_path.py
	$(BIN)/python benchmarks/bench_train_step.py

CONFIG ?= config/config.yaml
estimate: $(STAMP)
	$(BIN)/hypersparse estimate $(CONFIG)

status: $(STAMP)
	$(BIN)/hypersparse status $(CONFIG)

gpu-suite:
	bash benchmarks/gpu_suite.sh

clean-results:
	rm -rf results/runs results/tables results/logs results/benchmarks figures/*.png figures/*.pdf
