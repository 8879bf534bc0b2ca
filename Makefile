# The two commands of the README:
#   make run    the main job end to end on the embedded default (synthetic data)
#   make test   lint and the test suite
# Both create .venv if missing and install everything the project needs into it.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
DATA ?= data
PARAMS ?= params.yaml

.PHONY: install run test lint format clean pipelines image repro

install: $(VENV)/.installed

# torch is pinned and installed first: the CPU wheel; an unpinned torch would pull CUDA builds.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

RUNS ?= runs/synth

# The main job: make the synthetic default dataset (deterministic), run the KFP pipeline on
# this machine (KFP's local runner: prepare -> phase I -> select -> phase II -> evaluate ->
# export -> register, every stage tracked in ./mlflow.db), predict on two unseen synthetic
# photos (another seed) with the exported model, audit the registered champion (lineage,
# data hashes, scores re-evaluated), and print where everything is.
run: install
	$(BIN)/cirl synth --params $(PARAMS) --out $(DATA)/raw/synth
	$(BIN)/cirl pipeline run --params $(PARAMS) --source $(DATA)/raw/synth --out $(RUNS)
	$(BIN)/cirl synth --out $(DATA)/raw/field --n 2 --seed 1000
	$(BIN)/cirl predict --params $(PARAMS) $(DATA)/raw/field/images \
		--model $(RUNS)/model.onnx --out $(RUNS)/predict -q
	$(BIN)/cirl audit models:/cirl-crack@champion --params $(PARAMS) --verify \
		--out $(RUNS)/audit -q > /dev/null
	$(BIN)/cirl pipeline show --out $(RUNS)

# Recompile the committed pipeline packages after changing pipelines/ or components/.
pipelines: install
	$(BIN)/python pipelines/training.py
	$(BIN)/python pipelines/training.py --profile paper

# Build the image localhost/cirl:ci (and :latest) and check it inside; as root (docs/container.md).
image: install
	bash .ci/image.sh

# The same chain as DVC stages (dvc.yaml); outputs cached and pushed to the DVC remote.
repro: install
	$(BIN)/cirl synth --params $(PARAMS) --out data/raw/synth
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc repro

lint: install
	$(BIN)/ruff check src tests benchmarks components pipelines
	$(BIN)/ruff format --check src tests benchmarks components pipelines

test: lint
	$(BIN)/pytest

format: install
	$(BIN)/ruff format src tests benchmarks components pipelines
	$(BIN)/ruff check --fix src tests benchmarks components pipelines

clean:
	rm -rf $(VENV) $(DATA)/raw/synth $(DATA)/raw/field $(DATA)/prepared/synth $(RUNS)
