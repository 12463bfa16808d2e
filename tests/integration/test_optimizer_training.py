"""Meta-training (truncated BPTT) and the baseline comparison, on tiny problems; the scripts end to end."""

import csv
import json
import math
import runpy
import sys
from pathlib import Path

import pytest
import torch

from fewshot_l2l.optim.problems import QuadraticProblems
from fewshot_l2l.optim.comparison import (BaselineResult, baseline_curve, chunked_step, compare_with_baselines, curve_metrics,
                                         rule_curve, tune_baseline)
from fewshot_l2l.optim.rule_config import OptimizerTrainConfig, iteration_horizon, iteration_loss_scales, step_weights
from fewshot_l2l.optim.rule_training import load_rule_checkpoint, train_optimizer, unrolled_meta_loss, validate
from fewshot_l2l.optim.rules import AndrychowiczRule, MetaLSTMRule

ROOT = Path(__file__).resolve().parents[2]


def _double_rule_and_quadratics():
    """A small rule and two quadratics in float64, for comparisons with hand-run loops at tight tolerance."""
    torch.manual_seed(0)
    rule = AndrychowiczRule(hidden_size=3).double()
    problems = QuadraticProblems(dim=4, init_std=1.0).sample(2, seed=0)
    problems.weight, problems.target, problems.theta0 = problems.weight.double(), problems.target.double(), problems.theta0.double()
    return rule, problems


def _hand_run(rule, problems, theta, state, steps, scales=None):
    """``steps`` steps of ``rule`` with the gradient and loss of ``scales * f``; ``(mean f after each step, losses given)``."""
    losses, given = [], []
    for _ in range(steps):
        point = theta.detach().requires_grad_()
        seen = problems.loss(point, 0) * (1.0 if scales is None else scales)
        (grad,) = torch.autograd.grad(seen.sum(), point)
        given.append(seen.detach())
        with torch.no_grad():
            theta, state = rule(point, grad, seen.detach(), state)
        losses.append(problems.loss(theta, 0).mean().item())
    return losses, given


def test_meta_gradient_is_the_derivative_with_gradients_held_constant():
    """First-order truncated BPTT: d/dphi sum_t f(theta_t(phi)), with the gradients fed to the rule fixed."""
    rule, problems = _double_rule_and_quadratics()
    theta0 = problems.initial_theta()
    meta_loss, _, _ = unrolled_meta_loss(rule, problems, theta0, rule.initial_state(theta0), 0, 3)
    meta_loss.backward()

    # Record the gradients the rule saw, then treat them as constants.
    grads, theta, state = [], theta0.clone(), rule.initial_state(theta0)
    for _ in range(3):
        point = theta.detach().requires_grad_()
        grads.append(torch.autograd.grad(problems.loss(point, 0).sum(), point)[0])
        with torch.no_grad():
            theta, state = rule(theta, grads[-1], None, state)

    def frozen_objective():
        theta, state, total = theta0.clone(), rule.initial_state(theta0), 0.0
        with torch.no_grad():
            for grad in grads:
                theta, state = rule(theta, grad, None, state)
                total += problems.loss(theta, 0).mean().item()
        return total

    eps = 1e-6
    for param in (rule.output.bias, rule.layer1.weight_ih):
        with torch.no_grad():
            param.view(-1)[0] += eps
            up = frozen_objective()
            param.view(-1)[0] -= 2 * eps
            down = frozen_objective()
            param.view(-1)[0] += eps
        assert param.grad.view(-1)[0].item() == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-8)


def test_step_weights_weigh_each_steps_mean_loss():
    """The meta-loss sum_t w_t mean f(theta_t) of an unroll starting at step 2, against the losses of a plain run."""
    rule, problems = _double_rule_and_quadratics()
    theta0 = problems.initial_theta()
    _, theta2, state2 = unrolled_meta_loss(rule, problems, theta0, rule.initial_state(theta0), 0, 2)
    weights = torch.tensor([2.0, 0.0, 0.5], dtype=torch.float64)
    weighted, _, _ = unrolled_meta_loss(rule, problems, theta2, state2, 2, 3, weights)
    losses, _ = _hand_run(rule, problems, theta2, tuple(s.detach() for s in state2), 3)
    assert weighted.item() == pytest.approx(2.0 * losses[0] + 0.5 * losses[2], rel=1e-10)
    plain, _, _ = unrolled_meta_loss(rule, problems, theta2, state2, 2, 3)
    assert plain.item() == pytest.approx(sum(losses), rel=1e-10)


def test_loss_scales_change_what_the_rule_sees_not_the_meta_loss():
    """With scales s the rule is given the gradient and the loss of s f; the meta-loss is still the sum of the mean f."""
    rule, problems = _double_rule_and_quadratics()
    theta0 = problems.initial_theta()
    scales = torch.tensor([4.0, 0.25], dtype=torch.float64)
    given = []

    def recording_rule(theta, grad, loss, state, layout=None):
        given.append(loss)
        return rule(theta, grad, loss, state, layout=layout)

    meta_loss, _, _ = unrolled_meta_loss(recording_rule, problems, theta0, rule.initial_state(theta0), 0, 3, loss_scales=scales)
    losses, scaled_losses = _hand_run(rule, problems, theta0, rule.initial_state(theta0), 3, scales)
    assert meta_loss.item() == pytest.approx(sum(losses), rel=1e-10)
    for seen, expected in zip(given, scaled_losses):
        assert torch.allclose(seen, expected, rtol=1e-10)
    unscaled, _, _ = unrolled_meta_loss(rule, problems, theta0, rule.initial_state(theta0), 0, 3)
    assert abs(unscaled.item() - meta_loss.item()) > 1e-6  # the scales did change the iterates


def test_training_passes_each_unroll_its_weights_and_each_iteration_its_scales(tmp_path, monkeypatch):
    import fewshot_l2l.optim.rule_training as training
    calls, original = [], training.unrolled_meta_loss

    def recording(rule, problems, theta, state, start, unroll, weights=None, loss_scales=None):
        calls.append((start, weights.clone(), loss_scales.clone()))
        return original(rule, problems, theta, state, start, unroll, weights, loss_scales)

    monkeypatch.setattr(training, "unrolled_meta_loss", recording)
    config = OptimizerTrainConfig(hidden_size=2, horizon=4, unroll=2, horizon_schedule="random", max_horizon=6, meta_batch=3,
                                  iterations=3, val_every=3, val_problems=2, step_weights=(5.0, 4.0, 3.0),
                                  loss_scale_range=8.0, device="cpu", out=str(tmp_path / "run"))
    train_optimizer(config, progress=False)
    weights = step_weights(config, 6)
    unrolls = [(k, start) for k in range(3) for start in range(0, iteration_horizon(config, k), 2)]
    assert [start for start, _, _ in calls] == [start for _, start in unrolls]
    for (start, given, scales), (k, _) in zip(calls, unrolls):
        assert given.tolist() == weights[start:start + 2].tolist()
        assert torch.equal(scales, iteration_loss_scales(config, k, 3))


def test_loss_scales_are_log_uniform_and_reproducible():
    config = OptimizerTrainConfig(loss_scale_range=10.0)
    scales = iteration_loss_scales(config, 3, 4000)
    assert scales.shape == (4000,) and 0.1 <= scales.min() and scales.max() <= 10.0
    assert abs(scales.log10().mean().item()) < 0.03 and scales.log10().std().item() == pytest.approx(1 / 3 ** 0.5, rel=0.05)
    assert torch.equal(scales, iteration_loss_scales(config, 3, 4000))
    assert not torch.equal(scales, iteration_loss_scales(config, 4, 4000))
    assert iteration_loss_scales(OptimizerTrainConfig(), 3, 4) is None
    for bad in (0.5, math.nan, math.inf, "4", True):
        with pytest.raises(ValueError, match="loss_scale_range must be a finite number >= 1"):
            OptimizerTrainConfig(loss_scale_range=bad)


def test_step_weights_default_to_one_after_the_given_ones():
    assert step_weights(OptimizerTrainConfig(horizon=5, unroll=5, step_weights=[3, 0.5]), 5).tolist() == [3, 0.5, 1, 1, 1]
    assert step_weights(OptimizerTrainConfig(horizon=4, unroll=2), 4).tolist() == [1, 1, 1, 1]
    for bad in ([-1.0], [math.nan], ["2"], [True], None):
        with pytest.raises(ValueError, match=r"step_weights must be finite numbers >= 0, got"):
            OptimizerTrainConfig(horizon=4, unroll=2, step_weights=bad)
    with pytest.raises(ValueError, match=r"step_weights must be at most max_horizon \(4\) .*got 5 weights"):
        OptimizerTrainConfig(horizon=4, unroll=2, step_weights=[1.0] * 5)


def test_best_checkpoint_is_chosen_by_the_weighted_validation_loss(tmp_path):
    config = OptimizerTrainConfig(hidden_size=4, horizon=10, unroll=5, meta_batch=8, iterations=6, lr=3e-2, val_every=1,
                                  val_problems=8, step_weights=(50.0, 20.0), device="cpu", out=str(tmp_path / "run"))
    summary = train_optimizer(config, progress=False)
    with open(tmp_path / "run" / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    best_row = min(rows, key=lambda row: float(row["val_meta_loss"]))
    assert summary["best_val_sum_loss"] == pytest.approx(float(best_row["val_meta_loss"]))
    best, _, saved = load_rule_checkpoint(tmp_path / "run" / "best.pt")
    assert saved["progress"]["iteration"] == int(best_row["iteration"])
    val = QuadraticProblems().sample(8, seed=0, split="tune")
    final, total, weighted = validate(best, val, 10, step_weights(config, 10))
    curve = rule_curve(best, val, 10).double().mean(1)
    assert weighted == pytest.approx(total + 49 * curve[1].item() + 19 * curve[2].item(), rel=1e-5)
    assert (float(best_row["val_sum_loss"]), float(best_row["val_meta_loss"])) == pytest.approx((total, weighted), rel=1e-5)


def test_meta_training_lowers_the_meta_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    rule = AndrychowiczRule(hidden_size=8)
    problems = QuadraticProblems().sample(16, seed=0)
    optimizer = torch.optim.Adam(rule.parameters(), lr=2e-2)

    def meta_loss():
        theta = problems.initial_theta()
        return unrolled_meta_loss(rule, problems, theta, rule.initial_state(theta), 0, 10)[0]

    first = meta_loss().item()
    for _ in range(15):
        optimizer.zero_grad()
        meta_loss().backward()
        optimizer.step()
    assert meta_loss().item() < 0.6 * first


def test_train_optimizer_writes_checkpoints_and_learns(tmp_path):
    config = OptimizerTrainConfig(hidden_size=8, horizon=20, unroll=10, meta_batch=32, iterations=30, lr=1e-2,
                                  val_every=15, val_problems=32, device="cpu", out=str(tmp_path / "run"))
    summary = train_optimizer(config, progress=False)
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"init.pt", "last.pt", "best.pt", "metrics.csv"}
    assert summary["iterations"] == 30
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3
    untrained, _, _ = load_rule_checkpoint(run / "init.pt")
    trained, loaded_config, _ = load_rule_checkpoint(run / "best.pt")
    assert loaded_config == config
    val = QuadraticProblems().sample(32, seed=0, split="tune")
    assert curve_metrics(rule_curve(trained, val, 20))[1] < curve_metrics(rule_curve(untrained, val, 20))[1]
    with pytest.raises(FileExistsError, match="last.pt exists"):
        train_optimizer(config, progress=False)


def test_resume_equals_an_uninterrupted_run(tmp_path):
    values = dict(hidden_size=4, horizon=10, unroll=5, meta_batch=8, lr=1e-2, val_every=2, val_problems=8, device="cpu")
    train_optimizer(OptimizerTrainConfig(iterations=4, out=str(tmp_path / "full"), **values), progress=False)
    train_optimizer(OptimizerTrainConfig(iterations=2, out=str(tmp_path / "cut"), **values), progress=False)
    summary = train_optimizer(OptimizerTrainConfig(iterations=4, out=str(tmp_path / "cut"), resume=True, **values), progress=False)
    assert summary["iterations"] == 4
    full, _, _ = load_rule_checkpoint(tmp_path / "full" / "last.pt")
    resumed, _, _ = load_rule_checkpoint(tmp_path / "cut" / "last.pt")
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert len((tmp_path / "cut" / "metrics.csv").read_text().splitlines()) == 3
    train_optimizer(OptimizerTrainConfig(iterations=5, out=str(tmp_path / "cut"), resume=True, **{**values, "lr": 1e-3}),
                    progress=False)  # a second phase with a lower meta-learning rate
    _, _, saved = load_rule_checkpoint(tmp_path / "cut" / "last.pt")
    assert saved["optimizer"]["param_groups"][0]["lr"] == 1e-3 and saved["progress"]["iteration"] == 5
    # Other step weights or scales would make validation or training incomparable with the stored ones: refused.
    for changed in ({"step_weights": (2.0,)}, {"loss_scale_range": 4.0}):
        with pytest.raises(ValueError, match=next(iter(changed))):
            train_optimizer(OptimizerTrainConfig(iterations=6, out=str(tmp_path / "cut"), resume=True, **{**values, **changed}),
                            progress=False)
    # A longer horizon would make validation incomparable with the stored best score: refused.
    with pytest.raises(ValueError, match=r"horizon: 10 -> 20"):
        train_optimizer(OptimizerTrainConfig(iterations=6, out=str(tmp_path / "cut"), resume=True,
                                             **{**values, "horizon": 20}), progress=False)


def test_resume_with_loss_scales_equals_an_uninterrupted_run(tmp_path):
    values = dict(hidden_size=4, horizon=10, unroll=5, meta_batch=8, lr=1e-2, val_every=2, val_problems=8, device="cpu",
                  loss_scale_range=10.0, step_weights=(3.0,))
    train_optimizer(OptimizerTrainConfig(iterations=4, out=str(tmp_path / "full"), **values), progress=False)
    train_optimizer(OptimizerTrainConfig(iterations=2, out=str(tmp_path / "cut"), **values), progress=False)
    train_optimizer(OptimizerTrainConfig(iterations=4, out=str(tmp_path / "cut"), resume=True, **values), progress=False)
    train_optimizer(OptimizerTrainConfig(iterations=4, out=str(tmp_path / "unscaled"), **{**values, "loss_scale_range": 1.0}),
                    progress=False)
    full, resumed, unscaled = (load_rule_checkpoint(tmp_path / name / "last.pt")[0] for name in ("full", "cut", "unscaled"))
    assert all(torch.equal(a, b) for a, b in zip(full.parameters(), resumed.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(full.parameters(), unscaled.parameters()))


def test_init_from_starts_at_another_runs_weights(tmp_path):
    values = dict(hidden_size=4, horizon=10, unroll=5, meta_batch=8, val_every=1, val_problems=8, device="cpu")
    train_optimizer(OptimizerTrainConfig(iterations=1, out=str(tmp_path / "a"), seed=1, **values), progress=False)
    train_optimizer(OptimizerTrainConfig(iterations=1, out=str(tmp_path / "b"), init_from=str(tmp_path / "a" / "last.pt"),
                                         **values), progress=False)
    source, _, _ = load_rule_checkpoint(tmp_path / "a" / "last.pt")
    started, _, _ = load_rule_checkpoint(tmp_path / "b" / "init.pt")
    assert all(torch.equal(a, b) for a, b in zip(source.parameters(), started.parameters()))
    with pytest.raises(ValueError, match="differs from this run"):
        train_optimizer(OptimizerTrainConfig(iterations=1, out=str(tmp_path / "c"), init_from=str(tmp_path / "a" / "last.pt"),
                                             **{**values, "hidden_size": 5}), progress=False)


def test_corrupt_checkpoint_is_reported(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a learned-optimizer checkpoint"):
        load_rule_checkpoint(tmp_path / "bad.pt")


def test_config_validation():
    assert (OptimizerTrainConfig().meta_batch, OptimizerTrainConfig(problem="mlp").meta_batch) == (128, 1)
    assert OptimizerTrainConfig(problem="mlp", val_problems=3).val_problems == 3
    with pytest.raises(ValueError, match="multiple of unroll"):
        OptimizerTrainConfig(horizon=100, unroll=30)
    with pytest.raises(ValueError, match="problem must be one of"):
        OptimizerTrainConfig(problem="rosenbrock")


def test_batched_baseline_equals_separate_runs_and_divergence_scores_inf():
    problems = QuadraticProblems().sample(3, seed=4)
    batched = baseline_curve("adam", 0.1, problems, 15)
    for k in range(3):
        theta = problems.theta0[k].clone().requires_grad_()
        optimizer = torch.optim.Adam([theta], lr=0.1)
        for step in range(16):
            loss = ((problems.weight[k] @ theta - problems.target[k]) ** 2).sum()
            assert batched[step, k].item() == pytest.approx(loss.item(), rel=1e-4, abs=1e-6)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    diverged = baseline_curve("sgd", 10.0, problems, 50)
    assert curve_metrics(diverged) == (math.inf, math.inf)


def test_tuning_picks_the_best_learning_rate_of_the_grid():
    problems = QuadraticProblems().sample(8, seed=0, split="tune")
    grid = (1e-3, 1e-2, 1e-1)
    lr_final, lr_sum = tune_baseline("sgd", problems, 20, grid)
    scores = {lr: curve_metrics(baseline_curve("sgd", lr, problems, 20)) for lr in grid}
    assert scores[lr_final][0] == min(s[0] for s in scores.values())
    assert scores[lr_sum][1] == min(s[1] for s in scores.values())


def test_comparison_ratios():
    rule = AndrychowiczRule(hidden_size=4)
    comparison = compare_with_baselines(rule, QuadraticProblems(), 10, n_test=4, n_tune=4, lr_grid=(1e-2, 1e-1), progress=False)
    summary = comparison.summary("quadratic")
    best = summary["best_baseline"]
    assert best == min(summary["baselines"], key=lambda n: summary["baselines"][n]["final_loss"])
    assert summary["final_loss_ratio"] == pytest.approx(summary["learned_final_loss"] / summary["baselines"][best]["final_loss"])
    assert "| learned |" in comparison.table()
    steps = summary["baselines"][best]["steps_learned_lower"]
    assert set(steps) == {"lr_sum", "lr_final"} and all(0 <= n <= 10 for n in steps.values())


def test_steps_learned_lower_counts_steps_1_to_t_against_each_tuned_curve():
    learned = torch.tensor([9.0, 1.0, 1.0, 1.0, 1.0])  # step 0 (the shared start) is never counted
    sum_tuned = torch.tensor([0.0, 2.0, 0.5, 2.0, 0.5])  # learned lower at steps 1 and 3
    final_tuned = torch.tensor([0.0, 3.0, 3.0, 3.0, 0.9])  # lower at steps 1, 2, 3
    assert BaselineResult(0.1, 0.2, 0.9, 5.0, sum_tuned, final_tuned).steps_learned_lower(learned) == {"lr_sum": 2, "lr_final": 3}
    assert BaselineResult(0.1, 0.1, 0.5, 5.0, sum_tuned).steps_learned_lower(learned) == {"lr_sum": 2, "lr_final": 2}



def test_baselines_are_tuned_on_tune_problems_and_scored_on_test_problems(monkeypatch):
    import fewshot_l2l.optim.comparison as evaluation

    distribution, split_of = QuadraticProblems(), {}
    sample = distribution.sample

    def recording_sample(n, seed, split):
        problems = sample(n, seed, split=split)
        split_of[id(problems)] = split
        return problems

    monkeypatch.setattr(distribution, "sample", recording_sample)
    calls = []  # (who, split of the problems it ran on)
    tune, curve, learned = evaluation.tune_baseline, evaluation.baseline_curve, evaluation.rule_curve

    def recording_tune(name, problems, *args):
        calls.append(("tune", split_of[id(problems)]))
        return tune(name, problems, *args)

    def recording_curve(name, lr, problems, *args):
        if calls[-1][0] != "tune" or split_of[id(problems)] != "tune":  # not the grid search itself
            calls.append(("score", split_of[id(problems)]))
        return curve(name, lr, problems, *args)

    monkeypatch.setattr(evaluation, "tune_baseline", recording_tune)
    monkeypatch.setattr(evaluation, "baseline_curve", recording_curve)
    monkeypatch.setattr(evaluation, "rule_curve", lambda rule, problems, *a: calls.append(("learned", split_of[id(problems)])) or learned(rule, problems, *a))
    compare_with_baselines(AndrychowiczRule(hidden_size=4), distribution, 5, n_test=3, n_tune=3, lr_grid=(1e-2, 1e-1), progress=False)
    assert {split for who, split in calls if who == "tune"} == {"tune"}
    assert {split for who, split in calls if who in ("score", "learned")} == {"test"}
    assert sum(who == "score" for who, _ in calls) >= 4 and ("learned", "test") in calls


def run_script(name, args, monkeypatch, capsys):
    """Run scripts/<name> in this process (as ``python scripts/<name> args``) and return its stdout."""
    monkeypatch.setattr(sys, "argv", [name, *args])
    runpy.run_path(str(ROOT / "scripts" / name), run_name="__main__")
    return capsys.readouterr().out


def test_scripts_end_to_end(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    out = run_script("train_optimizer.py", ["--problem", "quadratic", "--out", str(run), "--hidden-size", "4",
                                            "--horizon", "6", "--unroll", "3", "--meta-batch", "4", "--iterations", "2",
                                            "--val-every", "1", "--val-problems", "4", "--n-test", "3", "--device", "cpu"],
                     monkeypatch, capsys)
    assert json.loads(out.splitlines()[-1])["evaluation"]["problem"] == "quadratic"
    out = run_script("evaluate_optimizer.py", ["--checkpoint", str(run / "best.pt"), "--horizon", "12", "--n-test", "3",
                                               "--n-tune", "3", "--lr-grid", "0.01", "0.1", "--json"], monkeypatch, capsys)
    result = json.loads(out.strip().splitlines()[-1])
    assert {"problem", "final_loss_ratio", "sum_loss_ratio", "best_baseline"} <= set(result)
    assert result["problem"] == "quadratic" and result["horizon"] == 12
    assert result["best_baseline"] in ("sgd", "nesterov", "rmsprop", "adam")
    assert Path(result["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("rule", [AndrychowiczRule(hidden_size=3), MetaLSTMRule(hidden_size=3)])
def test_chunked_step_equals_one_call(rule):
    theta, grad, loss = torch.randn(3, 50), torch.randn(3, 50), torch.rand(3)
    state = rule.initial_state(theta)
    state = rule(theta, grad, loss, state)[1]  # a non-zero state
    whole, whole_state = rule(theta, grad, loss, state)
    chunked, chunked_state = chunked_step(rule, theta, grad, loss, state, chunk_rows=3 * 7)
    assert torch.allclose(whole, chunked, atol=1e-6)  # matmul blocking may change the last bit
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(whole_state, chunked_state))
    assert type(chunked_state) is type(whole_state)


def test_mlp_meta_training_runs_end_to_end(tmp_path, monkeypatch):
    import fewshot_l2l.optim.rule_training as optimizer_training
    from fewshot_l2l.optim.problems import MLPProblems

    tiny = MLPProblems(hidden=4, batch_size=16, classes={"train": 10, "val": 10, "test": 10}, images_per_class=3, image_size=8)
    monkeypatch.setattr(optimizer_training, "make_problems", lambda name, device="cpu": tiny)
    config = OptimizerTrainConfig(problem="mlp", hidden_size=4, horizon=4, unroll=2, iterations=2, val_every=1, device="cpu",
                                  out=str(tmp_path / "run"))
    summary = train_optimizer(config, progress=False)
    assert summary["iterations"] == 2 and math.isfinite(summary["best_val_sum_loss"])
    rule, _, _ = load_rule_checkpoint(tmp_path / "run" / "best.pt")
    comparison = compare_with_baselines(rule, tiny, 4, n_test=3, n_tune=3, lr_grid=(0.1, 1.0), progress=False)
    assert math.isfinite(comparison.learned_final_loss) and comparison.best_baseline in ("sgd", "nesterov", "rmsprop", "adam")
