# Two entry points (README.md): `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= runs/demo

.PHONY: setup demo test clean bench-speed

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

# Meta-training/evaluation episodes/s, peak memory and FLOP fraction at the issue-5 settings
# (Omniglot 5w1s 28x28x1 and miniImageNet 5w5s 84x84x3 shapes, meta-batch 1 and 16), side by side
# with the naive sequential implementation; one JSON line per configuration (README "Speed").
bench-speed: setup
	$(PY) scripts/benchmark.py

clean:
	rm -rf $(VENV) runs
