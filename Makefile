# lungseg: two commands do everything from a fresh clone.
#   make demo   create .venv, install, generate the synthetic dataset if absent, train + evaluate infection_unet, then a small lung_unet
#   make test   create .venv if needed, install the dev extra (+ Debian's chromium for browser tests), ruff, then pytest

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_RAW := data/01_raw/synthetic_demo
TEST_WORKERS ?= 2
RESULTS  := data/08_reporting/comparison.csv

# No telemetry prompts or network calls, in a terminal or in CI.
export KEDRO_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONWARNINGS := ignore::DeprecationWarning

.PHONY: demo test install chromium ui viz mlflow bench clean-demo help

help:
	@echo "make demo   - install, generate the synthetic dataset, train + evaluate infection_unet (+ a small lung_unet) on it"
	@echo "make test   - install the dev extra and run the test suite"
	@echo "make ui     - start the web UI on http://127.0.0.1:8501"
	@echo "make viz    - kedro-viz on http://127.0.0.1:4141 (opens on infection_unet)"
	@echo "make mlflow - MLflow UI on http://127.0.0.1:5000"
	@echo "make bench  - run the benchmarks"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Progress bars redrawn into a file or a CI log are one endless line of carriage returns: when stderr is
# not a terminal, the demo's tqdm bars are off (tqdm reads TQDM_* defaults from the environment); the
# pipelines log a line per case and per epoch anyway. conf/logging.yml keeps Kedro to one line per node.
ifeq ($(shell [ -t 2 ] || echo no-tty),no-tty)
demo: export TQDM_DISABLE := 1
endif

demo: $(STAMP)
	@if [ ! -f $(DEMO_RAW)/metadata.csv ]; then \
		echo "==> generating the synthetic demo dataset in $(DEMO_RAW)"; \
		$(BIN)/kedro run --env=demo --pipelines=synthetic_data; \
	fi
	$(BIN)/kedro run --env=demo --pipelines=infection_unet
	@echo "==> a small lung model too, so that 'lungseg predict' and 'lungseg ui' work on the demo models"
	$(BIN)/kedro run --env=demo --pipelines=lung_unet
	@echo ""
	@echo "==> done."
	@echo "    models:        data/06_models/infection_unet/, data/06_models/lung_unet/"
	@echo "    reports:       data/08_reporting/infection_unet/ (metrics.json, metrics.csv, curves, overlays)"
	@echo "    MLflow runs:   make mlflow  (then choose 'Model training' in MLflow's UI)"
	@echo "    pipeline DAG:  $(BIN)/kedro viz run  (or: make viz)"
	@echo "==> results on the held-out synthetic cases ($(RESULTS)):"
	@$(BIN)/python -c "import pandas as pd; t = pd.read_csv('$(RESULTS)'); \
		cols = [c for c in ('variant', 'task', 'n_val_cases', 'slice_dice', 'slice_iou', 'case_dice', 'case_iou', \
		'case_hd95', 'paper_dice') if c in t]; print(t[cols].round(3).to_string(index=False))"

# Debian's chromium for the real-browser tests (root only, as in CI); tests skip with a reason without it.
chromium:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		echo "==> installing Debian's chromium for the browser tests"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
			|| echo "warning: chromium could not be installed; browser tests will be skipped (and fail under CI=true)"; \
	fi

# ruff first (pyproject's [tool.ruff]); then pytest, where "no tests collected" (exit 5) is a failure too.
# pytest-xdist runs the tests on TEST_WORKERS processes (the 2 cores), one test file at a time per worker
# (--dist loadfile), so a module-scoped fixture is built once. `make test TEST_WORKERS=0` runs them in one.
test: $(STAMP) chromium
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15; rc=$$?; \
		if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; fi; exit $$rc

ui: $(STAMP)
	$(BIN)/lungseg ui

# Opens on infection_unet (the readable DAG; the menu offers the others). kedro-viz serves from a child
# process, so it runs in a process group of its own, which is stopped whenever make is: by Ctrl-C, by a
# kill of make's PID (the loop sees make gone) or when kedro-viz exits; the port is then free.
viz: $(STAMP)
	@setsid $(BIN)/kedro viz run --host 127.0.0.1 --port 4141 --no-browser --pipeline infection_unet & pid=$$!; \
		trap 'kill -TERM -$$pid 2>/dev/null; exit 0' INT TERM EXIT; \
		while kill -0 $$pid 2>/dev/null && kill -0 $$PPID 2>/dev/null; do sleep 1; done

mlflow: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000 --workers 1

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_preprocess.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_inference.py
	$(BIN)/python benchmarks/bench_precision.py
	$(BIN)/python benchmarks/bench_precision_parity.py

clean-demo:
	rm -rf $(DEMO_RAW)
