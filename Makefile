# One command each, from a fresh clone with only Python 3.11:
#   make demo   — set up .venv (CPU torch 2.13.0) and run calibscope on the shipped sample checkpoints
#   make test   — set up .venv and run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.calibscope-installed
SAMPLES := sample_checkpoints

.PHONY: setup demo test lint bench samples docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,lightning,hf,tracking]'
	$(BIN)/python -m pip install --quiet --no-deps torch-uncertainty==0.13.0 pytorch-ood==0.4.0
	touch $(STAMP)

MODELS := $(SAMPLES)/digits_hard.pt2 $(SAMPLES)/digits_ls.pt2 $(SAMPLES)/digits_sam.pt2

# The sample models are tiny: calibscope itself then runs with one intra-op thread (calibscope/workflows/threads.py;
# OMP_NUM_THREADS or CALIBSCOPE_THREADS, when you set them, win).
demo: $(STAMP)
	$(BIN)/calibscope ece $(MODELS) --data $(SAMPLES)/digits_test.npz --out demo-out
	$(BIN)/calibscope compare $(MODELS) --data $(SAMPLES)/digits_test.npz --val $(SAMPLES)/digits_val.npz \
		--train $(SAMPLES)/digits_train.npz -o demo-out/compare.html
	@echo "Open demo-out/compare.html in a browser; reliability diagrams and ece.json are in demo-out/"

# pytest exits 5 when it collects no test: that is a failure here.
test: $(STAMP)
	$(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

# docs/cli.md from the Typer app (Typer's own generator), docs/api.md from the docstrings (tests check both)
docs: $(STAMP)
	$(BIN)/typer calibscope.cli utils docs --name calibscope --output docs/cli.md
	$(BIN)/python scripts/api_docs.py > docs/api.md

lint: $(STAMP)
	$(BIN)/ruff check calibscope tests scripts benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/inference.py

samples: $(STAMP)
	$(BIN)/python scripts/make_sample_checkpoints.py

clean:
	rm -rf $(VENV) .calibscope demo-out .pytest_cache
