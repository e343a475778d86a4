# Entry points documented in README.md.  Everything runs from a local virtual environment
# (.venv) built with the machine's python3; nothing is installed by hand.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
VALIDATE_STAMP := $(VENV)/.installed-validate
PRESET ?= default
SEED   ?= 0
DATA   ?= data/raw
PROCESSED ?= data/processed
REPORTS ?= reports
PYTEST_ARGS ?=
# pytest-xdist workers for `make test` (auto: one per core); the tests of the small study's
# quantification run in one of them (tests/conftest.py), so it is quantified once per run
TEST_WORKERS ?= auto

.PHONY: setup report test simulate lab bench validate clean clean-data

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name analysis --display-name "Python (analysis)"
	touch $(STAMP)

simulate: setup
	$(PY) -m analysis simulate --out $(DATA) --preset $(PRESET) --seed $(SEED) --if-empty

report: simulate
	$(PY) -m analysis report --data $(DATA) --processed $(PROCESSED) --reports $(REPORTS)

test: setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/bench_quantify.py
	$(PY) benchmarks/bench_filters.py
	$(PY) benchmarks/bench_memory.py --no-traced --cases plane256,plane2048,plane2048_syn,stack30

# type I error and CI coverage of every model on 1000 simulated studies each (~1 h of CPU);
# exits non-zero when one is significantly off (power 0.93 against a type I error of 0.08)
.PHONY: calibrate
calibrate: setup
	$(PY) benchmarks/calibrate_stats.py
	$(PY) benchmarks/calibrate_split.py

# validation against real images, an independent simulator (sim-fish) and the peer big-fish;
# puncta in sim-fish z-stacks; then the spine images' quality columns against the hand-marked
# real frames (every 5th frame); then spine detection on our simulator beside an oracle that
# knows the bare dendrites and the ideal observer (~2 min)
validate: $(VALIDATE_STAMP)
	$(PY) benchmarks/validate_real.py
	$(PY) benchmarks/validate_stacks.py
	$(PY) benchmarks/validate_spine_quality.py --every 5
	$(PY) benchmarks/spine_bounds.py

$(VALIDATE_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e ".[dev,validate]"
	touch $(VALIDATE_STAMP)

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info

clean-data:
	find data/raw data/processed reports -mindepth 1 ! -name README.md -exec rm -rf {} +
