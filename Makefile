# Two entry points (README.md): `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= runs/demo

.PHONY: setup demo test package-check clean bench-omniglot bench-optimizer bench-speed bench-horizons bench-rules bench-neural-art

setup: $(VENV)/.installed

# The editable install also puts the console scripts (fewshot-train, ...; pyproject.toml) in $(VENV)/bin.
# learn2learn (the l2l extra) is not in requirements.txt: plain pip does not install it on Python 3.11, so
# scripts/install_learn2learn.sh rebuilds its source release (about a minute; nothing to do once installed).
$(VENV)/.installed: requirements.txt pyproject.toml scripts/install_learn2learn.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	bash scripts/install_learn2learn.sh $(PY)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# Meta-train on the embedded glyph dataset (a few minutes on 2 CPU cores), then
# evaluate the untrained starting point and the best checkpoint on 600 test episodes (docs/results/demo.md).
demo: setup
	$(PY) scripts/train.py --dataset glyphs --episodes 600 --val-every 200 --val-episodes 100 --out $(DEMO_DIR) --resume
	$(PY) scripts/evaluate.py --checkpoint $(DEMO_DIR)/init.pt --split test --episodes 600
	$(PY) scripts/evaluate.py --checkpoint $(DEMO_DIR)/best.pt --split test --episodes 600

test: setup
	$(PY) -m pytest -q tests

# The package as users get it (CI runs it after the tests; about a minute): sdist and wheel built offline, the
# wheel installed into a throw-away virtualenv that reuses $(VENV)'s dependencies, its commands and the sdist's
# bundled tests run (.ci/check_package says what each step checks).
package-check: setup
	PYTHON=$(PY) bash .ci/check_package

# Real-Omniglot benchmark (docs/results/omniglot.md): HDF5 from the two minimal zips in ../shared/data/omniglot,
# 5-way 1-shot and 5-shot meta-trained concurrently for 40 min each on one CPU thread, 600 test episodes each.
bench-omniglot: setup
	$(PY) scripts/bench_omniglot.py --out runs/bench-omniglot

# Meta-training/evaluation episodes/s, peak memory and FLOP fraction at the issue-5 settings
# (Omniglot 5w1s 28x28x1 and miniImageNet 5w5s 84x84x3 shapes, meta-batch 1 and 16), side by side
# with the naive sequential implementation; one JSON line per configuration (docs/speed.md).
bench-speed: setup
	$(PY) scripts/benchmark.py

clean:
	rm -rf $(VENV) runs

# Learned optimizers (docs/results/learned_optimizers.md): meta-train the Andrychowicz LSTM rule on random
# quadratics and on the glyph MLP, then compare with tuned SGD / Nesterov / RMSprop / Adam on 100 held-out
# problems at the trained horizon (100) and at 2x (200). About an hour on 2 shared CPU cores.
BENCH_OPT_DIR ?= runs/bench-optimizer
MLP_TRAIN_ARGS ?= --iterations 80 --lr 5e-3 --val-every 20 --device cpu
# Learning rates the baselines are tuned over (MLP: extended upwards, where tuned Nesterov lands).
OPT_LR_GRID ?= 0.001 0.001778 0.003162 0.005623 0.01 0.01778 0.03162 0.05623 0.1 0.1778 0.3162 0.5623 1
MLP_EVAL_ARGS ?= --n-tune 20 --lr-grid $(OPT_LR_GRID) 1.778 3.162 5.623 10
bench-optimizer: setup
	$(PY) scripts/train_optimizer.py --problem quadratic --iterations 1500 --lr 3e-3 --n-test 0 --device cpu --out $(BENCH_OPT_DIR)/quadratic
	$(PY) scripts/train_optimizer.py --problem quadratic --iterations 2000 --lr 1e-3 --n-test 0 --device cpu --out $(BENCH_OPT_DIR)/quadratic --resume
	$(PY) scripts/evaluate_optimizer.py --checkpoint $(BENCH_OPT_DIR)/quadratic/best.pt
	$(PY) scripts/evaluate_optimizer.py --checkpoint $(BENCH_OPT_DIR)/quadratic/best.pt --horizon 200
	$(PY) scripts/train_optimizer.py --problem mlp $(MLP_TRAIN_ARGS) --n-test 0 --out $(BENCH_OPT_DIR)/mlp
	$(PY) scripts/evaluate_optimizer.py --checkpoint $(BENCH_OPT_DIR)/mlp/best.pt $(MLP_EVAL_ARGS)
	$(PY) scripts/evaluate_optimizer.py --checkpoint $(BENCH_OPT_DIR)/mlp/best.pt $(MLP_EVAL_ARGS) --horizon 200

# The rest of Andrychowicz et al. (docs/results/learned_optimizers_rest.md), one thread per process. Each target
# meta-trains, then evaluates; BENCH_REST_DIR holds the runs and RUN.evalH.json the `--json` lines.
# bench-horizons: the plain LSTM rule meta-trained on random horizons (MLP 100..200, conv-net 20..40), evaluated
# at 1x, 2x and 4x the shortest. bench-rules: GAC and NTM-BFGS trained like the plain rule on every problem, against
# it and tuned Adam (GAC with --seed 1 on the MLP and the conv-net: from seed 0 it sat at chance level). bench-neural-art: the plain rule trained at 64x64, tested at 64 and 128,
# with the paper's meta-loss (every step weighs 1) and with ART_FAST_START (the first three steps weigh 8, 4, 2 and the
# objective's scale is randomized over [1/10, 10], so that the rule is also ahead of tuned Adam in its first steps and
# at 128x128, whose gradients are 4x smaller per pixel).
BENCH_REST_DIR ?= runs/bench-rest
# conv-net and neural art: fewer tuning and test problems, each costs far more than an MLP's.
COSTLY_EVAL_ARGS ?= --n-tune 10 --n-test 20 --lr-grid $(OPT_LR_GRID)
MLP_RANDOM_ARGS ?= --problem mlp --horizon 100 --horizon-schedule random --max-horizon 200 --iterations 150 --lr 5e-3 --val-every 25 --val-problems 10
CONVNET_RANDOM_ARGS ?= --problem convnet --horizon 20 --unroll 10 --horizon-schedule random --max-horizon 40 --iterations 400 --lr 3e-3 --val-every 20 --val-problems 4
ART_FAST_START ?= --step-weights 8 4 2 --loss-scale-range 10
ART_ARGS ?= --problem neural-art --image-size 64 --horizon 50 --unroll 10 --iterations 200 --lr 3e-3 --val-every 25 --val-problems 4
QUAD_ARGS ?= --problem quadratic --iterations 600 --lr 3e-3
REST_TRAIN ?= OMP_NUM_THREADS=1 $(PY) scripts/train_optimizer.py --n-test 0 --device cpu
REST_EVAL ?= OMP_NUM_THREADS=1 $(PY) scripts/evaluate_optimizer.py --device cpu --json

bench-horizons: setup
	$(REST_TRAIN) $(MLP_RANDOM_ARGS) --out $(BENCH_REST_DIR)/mlp-andrychowicz
	for H in 100 200 400; do $(REST_EVAL) --checkpoint $(BENCH_REST_DIR)/mlp-andrychowicz/best.pt --horizon $$H $(MLP_EVAL_ARGS) > $(BENCH_REST_DIR)/mlp-andrychowicz.eval$$H.json || exit 1; done
	$(REST_EVAL) --checkpoint $(BENCH_REST_DIR)/mlp-andrychowicz/best.pt --problem mlp --hidden 40 --horizon 100 $(MLP_EVAL_ARGS) --baselines adam --plot $(BENCH_REST_DIR)/mlp-andrychowicz/variant_hidden40_h100.png > $(BENCH_REST_DIR)/mlp-andrychowicz.variant-hidden40.json
	$(REST_EVAL) --checkpoint $(BENCH_REST_DIR)/mlp-andrychowicz/best.pt --problem mlp --layers 2 --horizon 100 $(MLP_EVAL_ARGS) --baselines adam --plot $(BENCH_REST_DIR)/mlp-andrychowicz/variant_layers2_h100.png > $(BENCH_REST_DIR)/mlp-andrychowicz.variant-layers2.json
	$(REST_EVAL) --checkpoint $(BENCH_REST_DIR)/mlp-andrychowicz/best.pt --problem mlp --activation relu --horizon 100 $(MLP_EVAL_ARGS) --baselines adam --plot $(BENCH_REST_DIR)/mlp-andrychowicz/variant_activationrelu_h100.png > $(BENCH_REST_DIR)/mlp-andrychowicz.variant-activationrelu.json
	$(REST_TRAIN) $(CONVNET_RANDOM_ARGS) --out $(BENCH_REST_DIR)/convnet-andrychowicz
	for H in 20 40; do $(REST_EVAL) --checkpoint $(BENCH_REST_DIR)/convnet-andrychowicz/best.pt --horizon $$H $(COSTLY_EVAL_ARGS) > $(BENCH_REST_DIR)/convnet-andrychowicz.eval$$H.json || exit 1; done
	$(REST_EVAL) --checkpoint $(BENCH_REST_DIR)/convnet-andrychowicz/best.pt --horizon 80 $(COSTLY_EVAL_ARGS) --baselines adam > $(BENCH_REST_DIR)/convnet-andrychowicz.eval80.json

bench-rules: bench-horizons
	for R in andrychowicz andrychowicz-gac ntm-bfgs; do $(REST_TRAIN) $(QUAD_ARGS) --rule $$R --out $(BENCH_REST_DIR)/quad-$$R && $(REST_EVAL) --checkpoint $(BENCH_REST_DIR)/quad-$$R/best.pt --horizon 100 > $(BENCH_REST_DIR)/quad-$$R.eval100.json || exit 1; done
	$(REST_TRAIN) $(MLP_RANDOM_ARGS) --rule andrychowicz-gac --seed 1 --out $(BENCH_REST_DIR)/mlp-andrychowicz-gac && for H in 100 200; do $(REST_EVAL) --checkpoint $(BENCH_REST_DIR)/mlp-andrychowicz-gac/best.pt --horizon $$H $(MLP_EVAL_ARGS) --baselines adam > $(BENCH_REST_DIR)/mlp-andrychowicz-gac.eval$$H.json || exit 1; done
	$(REST_TRAIN) $(MLP_RANDOM_ARGS) --rule ntm-bfgs --out $(BENCH_REST_DIR)/mlp-ntm-bfgs && for H in 100 200; do $(REST_EVAL) --checkpoint $(BENCH_REST_DIR)/mlp-ntm-bfgs/best.pt --horizon $$H $(MLP_EVAL_ARGS) --baselines adam > $(BENCH_REST_DIR)/mlp-ntm-bfgs.eval$$H.json || exit 1; done
	$(REST_TRAIN) $(CONVNET_RANDOM_ARGS) --rule andrychowicz-gac --seed 1 --out $(BENCH_REST_DIR)/convnet-andrychowicz-gac && $(REST_EVAL) --checkpoint $(BENCH_REST_DIR)/convnet-andrychowicz-gac/best.pt --horizon 20 $(COSTLY_EVAL_ARGS) --baselines adam > $(BENCH_REST_DIR)/convnet-andrychowicz-gac.eval20.json
	$(REST_TRAIN) $(CONVNET_RANDOM_ARGS) --rule ntm-bfgs --out $(BENCH_REST_DIR)/convnet-ntm-bfgs && $(REST_EVAL) --checkpoint $(BENCH_REST_DIR)/convnet-ntm-bfgs/best.pt --horizon 20 $(COSTLY_EVAL_ARGS) --baselines adam > $(BENCH_REST_DIR)/convnet-ntm-bfgs.eval20.json
	for R in andrychowicz-gac ntm-bfgs; do $(REST_TRAIN) $(ART_ARGS) --rule $$R --out $(BENCH_REST_DIR)/art64-$$R && $(REST_EVAL) --checkpoint $(BENCH_REST_DIR)/art64-$$R/best.pt --horizon 50 $(COSTLY_EVAL_ARGS) --baselines adam > $(BENCH_REST_DIR)/art64-$$R.eval64.json || exit 1; done

bench-neural-art: setup
	$(REST_TRAIN) $(ART_ARGS) --out $(BENCH_REST_DIR)/art64-andrychowicz
	$(REST_TRAIN) $(ART_ARGS) $(ART_FAST_START) --out $(BENCH_REST_DIR)/art64-andrychowicz-fast-start
	for R in art64-andrychowicz art64-andrychowicz-fast-start; do $(REST_EVAL) --checkpoint $(BENCH_REST_DIR)/$$R/best.pt --horizon 50 $(COSTLY_EVAL_ARGS) > $(BENCH_REST_DIR)/$$R.eval64.json && $(REST_EVAL) --checkpoint $(BENCH_REST_DIR)/$$R/best.pt --horizon 50 --image-size 128 --n-tune 5 --n-test 10 --lr-grid $(OPT_LR_GRID) > $(BENCH_REST_DIR)/$$R.eval128.json || exit 1; done
