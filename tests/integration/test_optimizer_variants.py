"""The paper's other optimizers and problems end to end on tiny settings: GAC, NTM-BFGS, a rule per layer type,
horizon schedules, the conv-net problem, old checkpoints, and evaluation on problem variants."""

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch

from fewshot_l2l.optim import LearnedOptimizer
from fewshot_l2l.optim.convnet import ConvNetProblems
from fewshot_l2l.optim.per_type import LayerTypeRule
from fewshot_l2l.optim.rule_config import OptimizerTrainConfig, build_rule_for, iteration_horizon
from fewshot_l2l.optim.rule_training import load_rule_checkpoint, train_optimizer

ROOT = Path(__file__).resolve().parents[2]
QUICK = dict(problem="quadratic", hidden_size=4, horizon=4, unroll=2, meta_batch=4, iterations=2, val_every=1,
             val_problems=3, device="cpu")


@pytest.mark.parametrize("rule, extra", [("andrychowicz-gac", {"gac_cells": 2, "gac_scope": "model"}),
                                         ("ntm-bfgs", {"gac_cells": 1, "memory_size": 3, "read_heads": 2}),
                                         ("andrychowicz", {"per_layer_type": True})])
def test_new_rules_train_checkpoint_and_drive_a_model(tmp_path, rule, extra):
    config = OptimizerTrainConfig(rule=rule, out=str(tmp_path / "run"), **QUICK, **extra)
    summary = train_optimizer(config, progress=False)
    assert summary["iterations"] == 2
    loaded, saved_config, checkpoint = load_rule_checkpoint(tmp_path / "run" / "best.pt")
    assert loaded.config() == checkpoint["rule_config"] and saved_config.rule == rule
    if extra.get("per_layer_type"):
        assert isinstance(loaded, LayerTypeRule)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2, 1))
    optimizer = LearnedOptimizer(model.parameters(), loaded)
    x = torch.randn(4, 1, 3, 3)
    for _ in range(2):
        optimizer.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        optimizer.step(loss=loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_checkpoint_from_before_these_options_loads_unchanged(tmp_path):
    train_optimizer(OptimizerTrainConfig(out=str(tmp_path / "run"), **QUICK), progress=False)
    path = tmp_path / "run" / "best.pt"
    checkpoint = torch.load(path, weights_only=True)
    new_keys = ("gac_cells", "gac_scope", "memory_size", "read_heads", "per_layer_type", "horizon_schedule", "max_horizon")
    checkpoint["config"] = {k: v for k, v in checkpoint["config"].items() if k not in new_keys}
    assert checkpoint["rule_config"] == {"rule": "andrychowicz", "hidden_size": 4, "p": 10.0, "output_scale": 0.1}
    torch.save(checkpoint, tmp_path / "old.pt")
    rule, config, _ = load_rule_checkpoint(tmp_path / "old.pt")
    assert rule.coordinatewise and config.gac_cells == 0 and config.horizon_schedule == "fixed"
    assert all(torch.equal(a, b) for a, b in zip(rule.state_dict().values(), checkpoint["rule"].values()))


def test_horizon_schedules():
    fixed = OptimizerTrainConfig(**QUICK)
    assert fixed.max_horizon == 4 and {iteration_horizon(fixed, i) for i in range(5)} == {4}
    random = OptimizerTrainConfig(**{**QUICK, "iterations": 50}, horizon_schedule="random", max_horizon=10)
    drawn = [iteration_horizon(random, i) for i in range(50)]
    assert set(drawn) == {4, 6, 8, 10} and drawn == [iteration_horizon(random, i) for i in range(50)]
    curriculum = OptimizerTrainConfig(**{**QUICK, "iterations": 5}, horizon_schedule="curriculum")  # max 4 x 4
    assert [iteration_horizon(curriculum, i) for i in range(5)] == [4, 6, 10, 12, 16]
    with pytest.raises(ValueError, match="max_horizon .* must be a multiple of unroll"):
        OptimizerTrainConfig(**QUICK, horizon_schedule="random", max_horizon=7)
    with pytest.raises(ValueError, match="only random / curriculum horizon schedules use it"):
        OptimizerTrainConfig(**QUICK, max_horizon=8)
    with pytest.raises(ValueError, match="has no global averaging cells"):
        OptimizerTrainConfig(**QUICK, gac_cells=2)
    with pytest.raises(ValueError, match="per_layer_type is not available for ntm-bfgs"):
        OptimizerTrainConfig(**QUICK, rule="ntm-bfgs", per_layer_type=True)


def test_random_horizons_train_and_validate_at_the_longest(tmp_path):
    config = OptimizerTrainConfig(out=str(tmp_path / "run"), **{**QUICK, "iterations": 3}, horizon_schedule="random",
                                  max_horizon=8)
    summary = train_optimizer(config, progress=False)
    assert summary["iterations"] == 3


def test_convnet_meta_training_with_a_rule_per_layer_type(tmp_path, monkeypatch):
    import fewshot_l2l.optim.rule_training as optimizer_training

    tiny = ConvNetProblems(classes={"train": 10, "val": 10, "test": 10}, images_per_class=3, image_size=8, batch_size=12,
                           channels=2, conv_layers=2, hidden=4)
    monkeypatch.setattr(optimizer_training, "make_problems", lambda name, device="cpu": tiny)
    config = OptimizerTrainConfig(problem="convnet", rule="andrychowicz-gac", gac_cells=1, per_layer_type=True, hidden_size=3,
                                  horizon=4, unroll=2, iterations=2, val_every=1, val_problems=2, device="cpu",
                                  out=str(tmp_path / "run"))
    before = build_rule_for(config).state_dict()
    train_optimizer(config, progress=False)
    rule, _, _ = load_rule_checkpoint(tmp_path / "run" / "last.pt")
    for kind in ("conv", "fc"):  # both rules were trained (the net has conv and fully connected layers)
        key = f"rules.{kind}.output.weight"
        assert not torch.equal(rule.state_dict()[key], before[key]), kind


def run_script(name, args, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [name, *args])
    runpy.run_path(str(ROOT / "scripts" / name), run_name="__main__")
    return capsys.readouterr().out


def test_scripts_select_the_new_rules_and_evaluate_on_problem_variants(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    out = run_script("train_optimizer.py", ["--problem", "quadratic", "--rule", "ntm-bfgs", "--gac-cells", "2",
                                            "--gac-scope", "model", "--memory-size", "3", "--out", str(run),
                                            "--hidden-size", "4", "--horizon", "4", "--unroll", "2", "--meta-batch", "2",
                                            "--iterations", "1", "--val-problems", "2", "--n-test", "0", "--device", "cpu",
                                            "--horizon-schedule", "curriculum", "--max-horizon", "6"], monkeypatch, capsys)
    assert json.loads(out.splitlines()[-1])["iterations"] == 1
    rule, config, _ = load_rule_checkpoint(run / "best.pt")
    assert rule.config()["memory_size"] == 3 and rule.gac_scope == "model" and config.max_horizon == 6
    out = run_script("evaluate_optimizer.py", ["--checkpoint", str(run / "best.pt"), "--problem", "mlp", "--hidden", "5",
                                               "--layers", "2", "--activation", "relu", "--horizon", "2", "--n-test", "2",
                                               "--n-tune", "2", "--lr-grid", "0.1", "--baselines", "adam", "--json",
                                               "--device", "cpu"], monkeypatch, capsys)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["problem"] == "mlp" and result["problem_options"] == {"hidden": 5, "layers": 2, "activation": "relu"}
    assert result["plot"].endswith("best_mlp_hidden5_layers2_activationrelu_h2.png") and Path(result["plot"]).is_file()
    with pytest.raises(SystemExit):
        run_script("evaluate_optimizer.py", ["--checkpoint", str(run / "best.pt"), "--layers", "2"], monkeypatch, capsys)
    assert "quadratic takes no option" in capsys.readouterr().err


def test_neural_art_scripts_train_and_evaluate_at_twice_the_resolution(tmp_path, monkeypatch, capsys):
    run = tmp_path / "art"
    out = run_script("train_optimizer.py", ["--problem", "neural-art", "--image-size", "16", "--out", str(run),
                                            "--hidden-size", "3", "--horizon", "2", "--unroll", "1", "--meta-batch", "1",
                                            "--iterations", "1", "--val-problems", "1", "--n-test", "0", "--device", "cpu"],
                     monkeypatch, capsys)
    assert json.loads(out.splitlines()[-1])["iterations"] == 1
    _, config, _ = load_rule_checkpoint(run / "best.pt")
    assert config.problem_options == {"image_size": 16}
    out = run_script("evaluate_optimizer.py", ["--checkpoint", str(run / "best.pt"), "--image-size", "32", "--n-test", "2",
                                               "--n-tune", "2", "--lr-grid", "0.1", "--baselines", "adam", "--json",
                                               "--device", "cpu"], monkeypatch, capsys)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["problem_options"] == {"image_size": 32} and result["problem"] == "neural-art"
    assert result["images"].endswith("best_image_size32_h2_images.png")
    assert Path(result["images"]).read_bytes()[:4] == b"\x89PNG"
