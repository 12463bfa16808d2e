# Two entry points (README.md): `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= runs/demo

.PHONY: setup demo test clean bench-omniglot

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# Meta-train on the embedded glyph dataset (a few minutes on 2 CPU cores), then
# evaluate the untrained starting point and the best checkpoint on 600 test episodes.
demo: setup
	$(PY) scripts/train.py --dataset glyphs --episodes 600 --val-every 200 --val-episodes 100 --out $(DEMO_DIR) --resume
	$(PY) scripts/evaluate.py --checkpoint $(DEMO_DIR)/init.pt --split test --episodes 600
	$(PY) scripts/evaluate.py --checkpoint $(DEMO_DIR)/best.pt --split test --episodes 600

test: setup
	$(PY) -m pytest -q tests

# Real-Omniglot benchmark (README.md, "Real datasets"): HDF5 from the two minimal zips in ../shared/data/omniglot,
# 5-way 1-shot and 5-shot meta-trained concurrently for 40 min each on one CPU thread, 600 test episodes each.
bench-omniglot: setup
	$(PY) scripts/bench_omniglot.py --out runs/bench-omniglot

clean:
	rm -rf $(VENV) runs
