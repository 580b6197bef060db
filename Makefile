# Every target bootstraps .venv first. torch is installed on its own, pinned, before the rest:
# an unpinned torch (or a package asking for one) would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-core
BENCH_STAMP := $(VENV)/.installed-bench
TORCH := torch==2.13.0
DEMO := build/demo
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: install demo test bench lint clean

install: $(STAMP)

$(STAMP): requirements.txt setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) $(TORCH)
	$(PIP) -r requirements.txt
	$(PIP) --no-deps -e .
	touch $@

$(BENCH_STAMP): $(STAMP) requirements-bench.txt
	$(PIP) -r requirements-bench.txt
	touch $@

demo: $(STAMP)
	$(BIN)/python -m edgec.demo $(DEMO)
	$(BIN)/edgec build $(DEMO)/digits_cnn.pt2 --target cpu --target jetson --target rpi5 -p fp32 -p fp16 -p int8 --calib $(DEMO)/calib.npz --out $(DEMO)/build
	$(BIN)/edgec build $(DEMO)/digits_cnn.pt2 --target mcu --calib $(DEMO)/calib.npz --out $(DEMO)/build-mcu
	$(BIN)/edgec bench $(DEMO)/build --data $(DEMO)/eval.npz --labels $(DEMO)/eval_labels.npy --json $(DEMO)/results.json
	$(BIN)/edgec report $(DEMO)/results.json --html $(DEMO)/report.html --md $(DEMO)/report.md
	$(BIN)/edgec compare $(DEMO)/build $(DEMO)/build-mcu --data $(DEMO)/eval.npz --labels $(DEMO)/eval_labels.npy

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(BENCH_STAMP)
	NNCF_CI=1 $(BIN)/python -m bench.suite --out BENCHMARKS.md

lint: $(STAMP)
	$(BIN)/python -m ruff check .

clean:
	rm -rf build .pytest_cache
