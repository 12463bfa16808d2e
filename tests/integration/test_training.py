"""End to end on tiny data: meta-training, checkpoints, resume, evaluation and the scripts."""

import contextlib
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fewshot_l2l.runs.loop as loop
from fewshot_l2l.adaptation import run_episodes
from fewshot_l2l.checkpoints import load_checkpoint
from fewshot_l2l.data.episodes import EpisodeSampler
from fewshot_l2l.evaluation import evaluate, mean_ci95
from fewshot_l2l.methods import build_method, new_learner
from fewshot_l2l.methods.meta_lstm import MetaLSTMConfig
from fewshot_l2l.schedules import run_progress, scheduled_lr
from fewshot_l2l.training import meta_train

ROOT = Path(__file__).resolve().parents[2]


def tiny_config(tmp_path, **overrides):
    values = dict(n_way=3, k_shot=1, n_query=2, inner_steps=2, meta_batch=2, episodes=8, hidden_size=4,
                  hidden_channels=4, val_every=4, val_episodes=4, device="cpu", out=str(tmp_path / "run"))
    values.update(overrides)
    return MetaLSTMConfig(**values)


def test_mean_ci95_formula():
    values = [0.2, 0.4, 0.9, 0.5]
    mean = sum(values) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    assert mean_ci95(values) == pytest.approx((mean, 1.96 * std / 2))
    assert mean_ci95([0.7]) == (0.7, 0.0)
    with pytest.raises(ValueError):
        mean_ci95([])


def test_default_inner_steps_follow_the_authors():
    assert MetaLSTMConfig(k_shot=1).inner_steps == 12
    assert MetaLSTMConfig(k_shot=5).inner_steps == 8
    assert MetaLSTMConfig(k_shot=5, inner_steps=3).inner_steps == 3
    with pytest.raises(ValueError, match="query_bn"):
        MetaLSTMConfig(query_bn="running")
    with pytest.raises(ValueError, match="meta_batch"):
        MetaLSTMConfig(meta_batch=0)


def test_meta_training_fits_a_fixed_meta_batch(tiny_splits):
    """The meta-gradient is useful: repeated meta-updates on one meta-batch drive its query loss down."""
    config = MetaLSTMConfig(n_way=3, k_shot=1, n_query=3, inner_steps=3, hidden_size=8, hidden_channels=8, lr=0.01)
    method = build_method(config, new_learner(config, tiny_splits["train"].image_shape))
    meta_learner, learner = method.meta_learner, method.learner
    optimizer = torch.optim.Adam(meta_learner.parameters(), lr=config.lr)
    episode = EpisodeSampler(tiny_splits["train"], 3, 1, 3, seed=0).sample(4)
    losses = []
    for _ in range(25):
        result = run_episodes(meta_learner, learner, episode, config.inner_steps)
        optimizer.zero_grad()
        result.loss.backward()
        optimizer.step()
        losses.append(result.loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_meta_train_writes_checkpoints_and_metrics_and_resumes(tiny_data, tmp_path):
    config = tiny_config(tmp_path)
    summary = meta_train(config, progress=False)
    run = Path(config.out)
    assert {p.name for p in run.iterdir()} >= {"init.pt", "last.pt", "best.pt", "metrics.csv"}
    assert not list(run.glob("*.tmp"))
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["episodes"]) for r in rows] == [4, 8]
    assert 0 <= float(rows[-1]["val_acc"]) <= 1
    assert summary["episodes"] == 8
    assert summary["best_val_acc"] == pytest.approx(max(float(r["val_acc"]) for r in rows), rel=1e-5)

    with pytest.raises(FileExistsError, match="--resume"):
        meta_train(config, progress=False)

    method, loaded_config, checkpoint = load_checkpoint(run / "last.pt")
    assert loaded_config.n_way == 3 and checkpoint["progress"]["state"]["update"] == 4
    init = load_checkpoint(run / "init.pt").method
    assert not torch.equal(init.meta_learner.theta_init, method.meta_learner.theta_init)  # training moved theta_0

    longer = tiny_config(tmp_path, episodes=12, resume=True)
    assert meta_train(longer, progress=False)["episodes"] == 12
    assert len(list(csv.DictReader(open(run / "metrics.csv")))) == 3

    # Resuming under settings that change the experiment is refused, naming the setting.
    with pytest.raises(ValueError, match=r"n_query: 2 -> 3.*new --out"):
        meta_train(tiny_config(tmp_path, episodes=16, n_query=3, resume=True), progress=False)


def test_resume_reproduces_an_uninterrupted_run(tiny_data, tmp_path):
    straight = meta_train(tiny_config(tmp_path / "a", episodes=8), progress=False)
    meta_train(tiny_config(tmp_path / "b", episodes=4), progress=False)
    resumed = meta_train(tiny_config(tmp_path / "b", episodes=8, resume=True), progress=False)
    a, b = (load_checkpoint(summary["last"]).method.model for summary in (straight, resumed))
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(pa, pb, atol=1e-6), name


def test_evaluation_is_reproducible_from_a_seed(tiny_splits):
    config = MetaLSTMConfig(n_way=3, k_shot=1, n_query=2, inner_steps=2, hidden_size=4, hidden_channels=4)
    method = build_method(config, new_learner(config, tiny_splits["test"].image_shape))
    run = lambda seed: evaluate(method, tiny_splits["test"], n_episodes=10, seed=seed, batch_size=4,  # noqa: E731
                                progress=False)
    first, again, other = run(0), run(0), run(1)
    assert first.accuracies == again.accuracies and first.accuracies != other.accuracies
    assert first.n_episodes == len(first.accuracies) == 10
    assert (first.accuracy, first.ci95) == pytest.approx(mean_ci95(first.accuracies))
    assert not any(p.grad is not None for p in method.model.parameters())


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"something": 1}, bad)
    with pytest.raises(ValueError, match="bad.pt is not a fewshot_l2l checkpoint"):
        load_checkpoint(bad)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="truncated.pt is not a fewshot_l2l checkpoint or is corrupt"):
        load_checkpoint(truncated)


def run_script(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_train_and_evaluate_scripts_end_to_end(tmp_path):
    out = tmp_path / "cli"
    train = run_script("scripts/train.py", "--n-way", "3", "--k-shot", "1", "--n-query", "2", "--inner-steps", "2",
                       "--meta-batch", "2", "--episodes", "4", "--hidden-channels", "4", "--val-every", "4",
                       "--val-episodes", "2", "--device", "cpu", "--out", str(out))
    assert train.returncode == 0, train.stderr
    assert json.loads(train.stdout.strip().splitlines()[-1])["episodes"] == 4
    result = run_script("scripts/evaluate.py", "--checkpoint", str(out / "best.pt"), "--episodes", "6", "--json",
                        "--device", "cpu")
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout.strip())
    assert line["n_episodes"] == 6 and 0 <= line["accuracy"] <= 1 and 0 <= line["ci95"] <= 1
    missing = run_script("scripts/evaluate.py", "--checkpoint", str(out / "nope.pt"))
    assert missing.returncode != 0 and "nope.pt does not exist" in missing.stderr


def test_max_minutes_stops_early_with_a_final_checkpoint(tiny_data, tmp_path):
    summary = meta_train(tiny_config(tmp_path, episodes=400, max_minutes=1e-6), progress=False)
    assert summary["updates"] == 1 and summary["episodes"] == 2
    rows = list(csv.DictReader(open(Path(summary["last"]).parent / "metrics.csv")))
    assert len(rows) == 1 and Path(summary["best"]).exists()


def test_cosine_schedule_values():
    assert scheduled_lr(1e-3, "constant", 0.7) == 1e-3
    assert scheduled_lr(1e-3, "cosine", 0.0) == pytest.approx(1e-3)
    assert scheduled_lr(1e-3, "cosine", 0.5) == pytest.approx(0.5e-3)
    assert scheduled_lr(1e-3, "cosine", 0.9) == pytest.approx(1e-3 * (1 + math.cos(0.9 * math.pi)) / 2)
    assert scheduled_lr(1e-3, "cosine", 1.3) == pytest.approx(0.0, abs=1e-18)  # past the end: stays at 0
    with pytest.raises(ValueError, match="MetaLSTMConfig: lr_schedule must be one of"):
        MetaLSTMConfig(lr_schedule="step")


def test_halving_schedules_values():
    # Snell et al.'s: halved every 2,000 episodes, whatever the run's length.
    assert [scheduled_lr(1e-3, "halving", 0.99, episodes) for episodes in (0, 1999, 2000, 40000)] == \
        pytest.approx([1e-3, 1e-3, 5e-4, 1e-3 / 2**20])
    # Fitted to the run: 3 halvings at progress 1/4, 2/4, 3/4, the rate of the last quarter kept to the end and past it.
    rates = [scheduled_lr(1e-3, "halving-over-run", p, 10**9, halvings=3) for p in (0, 0.249, 0.25, 0.5, 0.749, 0.75,
                                                                                       1.0, 1.3)]
    assert rates == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4, 2.5e-4, 1.25e-4, 1.25e-4, 1.25e-4])
    assert scheduled_lr(1e-3, "halving-over-run", 0.999) == pytest.approx(1e-3 / 2**10)  # 10 halvings by default


def test_run_progress_is_the_larger_of_updates_and_time_spent():
    assert run_progress(5, 10) == 0.5
    assert run_progress(5, 10, elapsed_s=1e6) == 0.5  # no budget: the clock does not count
    assert run_progress(2, 10, elapsed_s=90.0, max_minutes=2.0) == pytest.approx(0.75)  # 90 s of 120
    assert run_progress(8, 10, elapsed_s=90.0, max_minutes=2.0) == pytest.approx(0.8)
    assert run_progress(3, 10, elapsed_s=500.0, max_minutes=2.0) == 1.0


class _ClockAt:
    """A stand-in for runs.loop.Stopwatch whose clock always reads ``share`` of the time budget."""

    share = 0.0

    def __init__(self, elapsed_s: float = 0.0, max_minutes: float | None = None, validation_s: float = 0.0) -> None:
        self.max_minutes, self.validation_s = max_minutes, validation_s

    def validating(self):
        return contextlib.nullcontext()

    @property
    def elapsed_s(self) -> float:
        return self.share * 60 * self.max_minutes

    training_s = elapsed_s  # no validation time

    def out_of_time(self) -> bool:
        return self.share >= 1


def test_cosine_schedule_follows_a_time_budget(tiny_data, tmp_path, monkeypatch):
    # 8 episodes at meta-batch 2: 4 updates. With 90% of the budget spent the last update steps with the rate at
    # 90% of the schedule, not at 3/4 as the update count alone would give.
    monkeypatch.setattr(loop, "Stopwatch", _ClockAt)
    monkeypatch.setattr(_ClockAt, "share", 0.9)
    summary = meta_train(tiny_config(tmp_path / "a", lr_schedule="cosine", max_minutes=5.0), progress=False)
    saved = torch.load(summary["last"], weights_only=False)["optimizer"]["param_groups"][0]["lr"]
    assert summary["updates"] == 4 and saved == pytest.approx(1e-3 * (1 + math.cos(0.9 * math.pi)) / 2)
    # With 10% spent the update count leads: the last update's rate is that of 3/4 of the run.
    monkeypatch.setattr(_ClockAt, "share", 0.1)
    summary = meta_train(tiny_config(tmp_path / "b", lr_schedule="cosine", max_minutes=5.0), progress=False)
    saved = torch.load(summary["last"], weights_only=False)["optimizer"]["param_groups"][0]["lr"]
    assert saved == pytest.approx(1e-3 * (1 + math.cos(0.75 * math.pi)) / 2)
    # A constant rate ignores the clock.
    summary = meta_train(tiny_config(tmp_path / "c", max_minutes=5.0), progress=False)
    assert torch.load(summary["last"], weights_only=False)["optimizer"]["param_groups"][0]["lr"] == 1e-3
    # Halving over the run reads it as cosine does: at 90% of the budget, after 3 of 3 halvings (the last at 75%).
    monkeypatch.setattr(_ClockAt, "share", 0.9)
    summary = meta_train(tiny_config(tmp_path / "d", lr_schedule="halving-over-run", lr_halvings=3, max_minutes=5.0),
                         progress=False)
    assert torch.load(summary["last"], weights_only=False)["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1.25e-4)


def test_cosine_schedule_sets_adams_lr_and_resumes_on_it(tiny_data, tmp_path):
    # 8 episodes at meta-batch 2: 4 updates; the last one steps with lr * (1 + cos(3/4 pi)) / 2.
    summary = meta_train(tiny_config(tmp_path, lr_schedule="cosine"), progress=False)
    saved = torch.load(summary["last"], weights_only=False)["optimizer"]["param_groups"][0]["lr"]
    assert saved == pytest.approx(1e-3 * (1 + math.cos(0.75 * math.pi)) / 2)
    # Resumed to 12 episodes (6 updates), the schedule is recomputed over the new length from update 4 on.
    resumed = meta_train(tiny_config(tmp_path, lr_schedule="cosine", episodes=12, resume=True), progress=False)
    saved = torch.load(resumed["last"], weights_only=False)["optimizer"]["param_groups"][0]["lr"]
    assert resumed["updates"] == 6 and saved == pytest.approx(1e-3 * (1 + math.cos(5 / 6 * math.pi)) / 2)


def test_every_method_validates_on_the_same_episodes_at_the_same_shares_of_its_budget(tiny_data, tmp_path, monkeypatch):
    """The Meta-LSTM used to draw its validation episodes meta_batch at a time, the baselines 8 at a time: other
    episodes from the same seed. Now every method validates with one batch size, at the same shares of its budget."""
    import fewshot_l2l.evaluation as evaluation
    from fewshot_l2l.methods import method_config

    drawn: dict[str, list] = {}
    method = [""]

    class Recording(EpisodeSampler):
        def sample(self, n_episodes=1):
            episode = super().sample(n_episodes)
            drawn.setdefault(method[0], []).append((episode.support_x.clone(), episode.query_y.clone()))
            return episode

    monkeypatch.setattr(evaluation, "EpisodeSampler", Recording)
    shared = dict(n_way=3, k_shot=1, n_query=2, episodes=8, validations=4, val_every=10**6, hidden_channels=4,
                  val_episodes=10, device="cpu")
    rows = {}
    for name, own in (("meta-lstm", dict(meta_batch=2, inner_steps=2, hidden_size=4)), ("protonet", {})):
        method[0] = name
        meta_train(method_config(name, out=str(tmp_path / name), **shared, **own), progress=False)
        rows[name] = [int(row["episodes"]) for row in csv.DictReader(open(tmp_path / name / "metrics.csv"))]
    assert rows == {"meta-lstm": [2, 4, 6, 8], "protonet": [2, 4, 6, 8]}  # every quarter of the 8 episodes
    first, other = drawn["meta-lstm"], drawn["protonet"]
    assert len(first) == len(other) == 4 * 2  # 4 validations of 10 episodes, 8 at a time
    for (x_a, y_a), (x_b, y_b) in zip(first, other):
        assert torch.equal(x_a, x_b) and torch.equal(y_a, y_b)
