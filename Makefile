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

.PHONY: install run test lint format clean

install: $(VENV)/.installed

# torch is pinned and installed first: the CPU wheel; an unpinned torch would pull CUDA builds.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

RUNS ?= runs/synth

# prepare -> train phase I -> select -> train phase II -> evaluate -> export -> predict,
# on the synthetic default; predict runs on two unseen synthetic photos (another seed)
run: install
	$(BIN)/cirl synth --params $(PARAMS) --out $(DATA)/raw/synth
	$(BIN)/cirl prepare --params $(PARAMS) --source $(DATA)/raw/synth --format folder \
		--out $(DATA)/prepared/synth -q
	$(BIN)/cirl train --params $(PARAMS) --data $(DATA)/prepared/synth --phase 1 \
		--out $(RUNS)/phase1 -q
	$(BIN)/cirl select --params $(PARAMS) --data $(DATA)/prepared/synth \
		--checkpoint $(RUNS)/phase1/last.pt --out $(RUNS)/select -q
	$(BIN)/cirl train --params $(PARAMS) --data $(DATA)/prepared/synth --phase 2 \
		--init $(RUNS)/phase1/last.pt --ambiguity $(RUNS)/select --out $(RUNS)/phase2 -q
	$(BIN)/cirl evaluate --params $(PARAMS) --data $(DATA)/prepared/synth \
		--checkpoint $(RUNS)/phase2/best.pt --out $(RUNS)/eval -q
	$(BIN)/cirl export --params $(PARAMS) --checkpoint $(RUNS)/phase2/best.pt \
		--out $(RUNS)/model.onnx
	$(BIN)/cirl synth --out $(DATA)/raw/field --n 2 --seed 1000
	$(BIN)/cirl predict --params $(PARAMS) $(DATA)/raw/field/images \
		--model $(RUNS)/model.onnx --out $(RUNS)/predict -q

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: lint
	$(BIN)/pytest

format: install
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) $(DATA)/raw/synth $(DATA)/raw/field $(DATA)/prepared/synth $(RUNS)
