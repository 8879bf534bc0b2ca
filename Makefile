# The two commands of the README:
#   make run    the main job end to end on the embedded default (synthetic data)
#   make test   lint and the test suite
# Both create .venv if missing and install everything the project needs into it.

# uv writes no .pyc files at install, and where PYTHONDONTWRITEBYTECODE is set (as on this
# project's machines) Python never writes them either: every process of the main job compiled
# torch, mlflow and kfp from source again, about 5 s each of its 14 processes. The commands
# below write them on first use instead, into .venv (a tenth of what uv --compile-bytecode
# compiles up front, 30 s here; docs/benchmarks.md, "Where make run spends its time").
unexport PYTHONDONTWRITEBYTECODE

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= data
PARAMS ?= params.yaml

.PHONY: install run test lint format clean pipelines image repro

# The venv is the lock, exactly (docs/install.md): requirements.lock pins every package with its
# sha256 hashes, resolved by uv for CPython 3.11 on Linux x86_64 from pyproject.toml (its
# dependencies and dev extra) and LOCK_EXTRA. `make install` syncs the venv to it, then adds the
# project itself, editable and without dependencies; `make lock` refreshes it after a change to
# pyproject.toml (LOCK_ARGS=--upgrade moves every pin to the newest release that fits).
LOCK := requirements.lock
# torch: the CPU build (PyPI's torch pulls gigabytes of CUDA packages); uv and pip: the venv's
# own tools, which `uv pip sync` would remove if the lock did not pin them.
TORCH_PIN := torch==2.13.0+cpu
LOCK_EXTRA := $(TORCH_PIN) uv pip
LOCK_PLATFORM ?= --python-version 3.11 --python-platform x86_64-manylinux_2_28
LOCK_TARGET ?= CPython 3.11 on linux x86_64
LOCK_ARGS ?=
# Where uv finds the torch CPU wheel: pip's own find-links (PIP_FIND_LINKS or pip.conf, as on
# this project's machines), else PyTorch's page of CPU wheels.
FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links \
	2>/dev/null),https://download.pytorch.org/whl/cpu/torch/)
UV_SOURCES = $(addprefix --find-links ,$(FIND_LINKS))
UV := $(BIN)/uv
define LOCK_TARGET_CHECK
import platform, sys
here = f"CPython {sys.version_info[0]}.{sys.version_info[1]} on {sys.platform} {platform.machine()}"
if here != "$(LOCK_TARGET)":
    sys.exit(f"make install: $(LOCK) is for $(LOCK_TARGET), $(VENV) has {here}: set PYTHON to "
             "a Python for which the lock was made (and remove $(VENV)), or see docs/install.md")
endef
export LOCK_TARGET_CHECK

.PHONY: lock

install: $(VENV)/.installed

# No fallback to resolving afresh: a venv that resolved differently is what the lock prevents.
$(VENV)/.installed: $(LOCK) pyproject.toml | $(UV)
	@$(BIN)/python -c "$$LOCK_TARGET_CHECK"
	$(UV) pip sync -q --python $(BIN)/python --require-hashes $(UV_SOURCES) $(LOCK)
	$(UV) pip install -q --python $(BIN)/python --offline --no-deps --no-build-isolation -e .
	$(UV) pip check --python $(BIN)/python || { echo "make install: the venv synced from" \
		"$(LOCK) does not satisfy pyproject.toml: refresh it with 'make lock' (docs/install.md)" \
		>&2; exit 1; }
	touch $@

# uv itself, bootstrapped by pip at the version and hash the lock pins (the committed one's
# while a new LOCK=... does not exist yet).
$(UV):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	sed -n '/^uv==/,/[^\\]$$/p' $(firstword $(wildcard $(LOCK)) requirements.lock) \
		| $(BIN)/python -m pip install -q --no-deps --require-hashes -r /dev/stdin

lock: | $(UV)
	printf '%s\n' $(LOCK_EXTRA) | $(UV) pip compile -q pyproject.toml - --extra dev \
		--generate-hashes $(LOCK_PLATFORM) $(UV_SOURCES) --custom-compile-command 'make lock' \
		$(LOCK_ARGS) -o $(LOCK)

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
