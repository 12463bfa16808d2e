"""Checkpoints written by the code before the one training loop (main at 2f1a744, tests/fixtures/checkpoints_2f1a744/,
made by the make_checkpoints.py beside them on tiny glyph runs) load through the one loader, evaluate, and resume."""

import csv
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fewshot_l2l.checkpoints import load_checkpoint
from fewshot_l2l.data import load_splits
from fewshot_l2l.evaluation import evaluate
from fewshot_l2l.methods.meta_lstm import MetaLSTMConfig
from fewshot_l2l.optim.rule_training import load_rule_checkpoint
from fewshot_l2l.training import meta_train

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints_2f1a744"
FEW_SHOT = {"meta-lstm_last.pt": "meta-lstm", "maml.pt": "maml", "metasgd.pt": "metasgd", "protonet.pt": "protonet",
            "finetune.pt": "finetune"}
# Settings added since, whose defaults differ from what those runs did: an old checkpoint loads with the old meaning.
OLD_MEANINGS = {"maml": {"inner_loss": "mean"}, "metasgd": {"inner_loss": "mean"}, "protonet": {"lr_schedule": "halving"},
                "finetune": {"head_fit": "full-batch"}}


@pytest.fixture(scope="module")
def glyph_test_split():
    return load_splits("glyphs", seed=0)["test"]


@pytest.mark.parametrize("name, method", sorted(FEW_SHOT.items()))
def test_an_old_few_shot_checkpoint_loads_and_evaluates(name, method, glyph_test_split, request):
    if method in ("maml", "metasgd"):
        request.getfixturevalue("learn2learn")
    saved = torch.load(FIXTURES / name, weights_only=True)
    loaded = load_checkpoint(FIXTURES / name)
    assert loaded.config.method == method and type(loaded.config).__name__ != "BaselineConfig"
    assert (loaded.config.n_way, loaded.config.k_shot, loaded.config.hidden_channels) == (3, 1, 4)
    for setting, old_meaning in OLD_MEANINGS.get(method, {}).items():
        assert setting not in saved["config"] and getattr(loaded.config, setting) == old_meaning, setting
    if method == "maml":  # stored, so the new default (the training steps) does not apply
        assert saved["config"]["test_inner_steps"] == loaded.config.test_inner_steps == 3
    state_key = "meta_learner" if method == "meta-lstm" else "model"
    for key, value in loaded.method.model.state_dict().items():  # the stored weights, every one
        assert torch.equal(value, saved[state_key][key]), key
    result = evaluate(loaded.method, glyph_test_split, n_episodes=2, seed=0, progress=False)
    assert result.n_episodes == 2 and 0 <= result.accuracy <= 1


def test_an_old_meta_lstm_run_resumes(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(FIXTURES / "meta-lstm_last.pt", run / "last.pt")
    shutil.copy(FIXTURES / "meta-lstm_metrics.csv", run / "metrics.csv")
    config = load_checkpoint(run / "last.pt").config
    assert isinstance(config, MetaLSTMConfig) and (config.episodes, config.meta_batch) == (12, 2)
    summary = meta_train(replace(config, out=str(run), episodes=16, resume=True), progress=False)
    assert (summary["updates"], summary["episodes"]) == (8, 16)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(row["update"]) for row in rows] == [2, 4, 6, 8]  # the old log, continued


def test_an_old_learned_optimizer_checkpoint_loads():
    rule, config, checkpoint = load_rule_checkpoint(FIXTURES / "optimizer-quadratic.pt")
    assert config.problem == "quadratic" and config.iterations == 4 and rule.kind == "andrychowicz"
    for key, value in rule.state_dict().items():
        assert torch.equal(value, checkpoint["rule"][key]), key
