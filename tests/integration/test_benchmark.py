"""The benchmark's naive yardstick computes what the fast path computes; its rows carry the promised keys;
the throughput mode runs the reference's own code side by side."""

import math
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from benchmarks.cli import parse_args
from benchmarks.flops import learner_flops_per_episode
from benchmarks.naive import naive_loss
from benchmarks.reference import REFERENCE_MODULES, ReferenceRunner, import_reference
from benchmarks.speed import SHAPES, BenchmarkSettings, benchmark_configuration, markdown_table, synthetic_split
from benchmarks.throughput import Layout, ThroughputSettings, measure_throughput, throughput_table
from fewshot_l2l.adaptation import run_episodes
from fewshot_l2l.data.episodes import EpisodeSampler
from fewshot_l2l.learner import ConvLearner, LearnerConfig
from fewshot_l2l.meta_learner import MetaLearner

TINY = replace(SHAPES["omniglot-5w1s"], name="tiny", image_size=16, hidden_channels=3, n_way=3, k_shot=2, n_query=2,
               inner_steps=3, reference_s_per_episode=None)


def test_naive_implementation_matches_the_fast_one():
    learner = ConvLearner(LearnerConfig(1, 16, 3, hidden_channels=3))
    meta = MetaLearner(learner.init_params(torch.Generator().manual_seed(0)), hidden_size=4).double()
    with torch.no_grad():  # large meta-weights so that the inner loop changes the learner a lot
        meta.cell.bias_input.fill_(-1.0)
        meta.lstm.weight_ih.uniform_(-0.5, 0.5)
    split = synthetic_split(TINY, "cpu", n_classes=6)
    episode = EpisodeSampler(split, 3, 2, 2, seed=1).sample(2)
    for name in ("support_x", "query_x"):
        setattr(episode, name, getattr(episode, name).double())

    fast = run_episodes(meta, learner, episode, 3)
    fast.loss.backward()
    fast_grads = [p.grad.clone() for p in meta.parameters()]
    meta.zero_grad()
    naive_meta_loss, naive_accuracy = naive_loss(meta, learner, episode, inner_steps=3)
    naive_meta_loss.backward()

    assert naive_meta_loss.item() == pytest.approx(fast.loss.item(), rel=1e-10)
    assert torch.equal(naive_accuracy, fast.accuracy)
    for fast_grad, param in zip(fast_grads, meta.parameters()):
        assert torch.allclose(param.grad, fast_grad, rtol=1e-8, atol=1e-12)
    assert fast_grads[0].abs().max() > 0


def test_learner_flops_match_the_analytic_count():
    config = LearnerConfig(1, 16, 3, hidden_channels=2)
    learner = ConvLearner(config)
    # Forward: 2 x multiply-accumulates of each 3x3 convolution (sides 16, 8, 4, 2) and of the head.
    conv = [2 * side * side * 2 * c_in * 9 for side, c_in in ((16, 1), (8, 2), (4, 2), (2, 2))]
    head = 2 * learner.feature_dim * 3
    forward = sum(conv) + head
    # Backward: input and weight gradients (2x forward), except the first convolution's input gradient.
    forward_backward = 3 * forward - conv[0]
    n_support, n_query, steps = 6, 9, 4
    train = learner_flops_per_episode(learner, n_support, n_query, steps, train=True)
    evaluation = learner_flops_per_episode(learner, n_support, n_query, steps, train=False)
    assert train == steps * n_support * forward_backward + n_query * forward_backward
    assert evaluation == steps * n_support * forward_backward + n_query * forward


def test_benchmark_row_has_the_issue_keys():
    row = benchmark_configuration(TINY, BenchmarkSettings(meta_batch=2, min_timed_episodes=2, naive_episodes=1))
    for key in ("config", "meta_batch", "train_episodes_per_s", "eval_episodes_per_s", "peak_rss_mb",
                "speedup_vs_naive", "flop_fraction", "naive_train_episodes_per_s", "matmul_gflop_per_s"):
        assert key in row, key
    assert row["config"] == "tiny" and row["meta_batch"] == 2 and row["timed_episodes"] == 2
    for key in ("train_episodes_per_s", "eval_episodes_per_s", "peak_rss_mb", "speedup_vs_naive", "flop_fraction"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    assert row["flop_fraction"] < row["flop_fraction_with_meta_learner"]
    table = markdown_table([row])
    assert table.count("\n") == 2 and "| tiny | 2 |" in table


# ----------------------------------------------------------------------------------------------
# Throughput mode and the reference (a local copy of the public PyTorch port, never part of the repository)
# ----------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
REFERENCE_CANDIDATES = [Path(p) for p in filter(None, [os.environ.get("FEWSHOT_L2L_REFERENCE")])] + [
    REPO.parent / "reference", REPO.parent.parent / "reference"]


@pytest.fixture(scope="module")
def reference_dir():
    """The reference's folder ($FEWSHOT_L2L_REFERENCE, or ../reference); the test is skipped without one."""
    for path in REFERENCE_CANDIDATES:
        if (path / "main.py").is_file():
            return path
    pytest.skip(f"no copy of the reference at {', '.join(map(str, REFERENCE_CANDIDATES))} (set FEWSHOT_L2L_REFERENCE)")


def test_layouts_parse_and_reject_nonsense():
    assert Layout.parse("2x1") == Layout(2, 1) and str(Layout(1, 2)) == "1x2"
    for bad in ("2", "0x1", "ax2"):
        with pytest.raises(ValueError, match=f"layout {bad!r}"):
            Layout.parse(bad)


def test_benchmark_command_line_checks_the_throughput_flags():
    assert parse_args(["--throughput"]).meta_batches == [2] and parse_args([]).meta_batches == [1, 16]
    with pytest.raises(SystemExit):
        parse_args(["--reference", "somewhere"])  # needs --throughput
    with pytest.raises(SystemExit):
        parse_args(["--throughput", "--layouts", "2x1", "--meta-batches", "3"])


def test_reference_runs_one_episode_of_its_own_code(reference_dir):
    before = {name: sys.modules.get(name) for name in REFERENCE_MODULES}
    code = import_reference(reference_dir)
    assert {name: sys.modules.get(name) for name in REFERENCE_MODULES} == before  # imported, then unlisted again
    assert Path(code.main.__file__).parent == reference_dir.resolve()
    runner = ReferenceRunner(code, 1, 16, 3, 2, 2, inner_steps=2)
    episode = EpisodeSampler(synthetic_split(TINY, "cpu", n_classes=6), 3, 2, 2, seed=1).sample(2)
    x = ReferenceRunner.episode_tensor(episode, 1)
    assert x.shape == (3, 4, 1, 16, 16)
    assert torch.equal(x[1, :2], episode.support_x[1, 2:4]) and torch.equal(x[2, 2:], episode.query_x[1, 4:6])
    initial = runner.meta_learner.metalstm.cI.detach().clone()
    assert math.isfinite(runner.train_episode(x))
    assert not torch.equal(initial, runner.meta_learner.metalstm.cI)  # Adam stepped its learner initialization
    runner.eval_episode(x)
    with pytest.raises(FileNotFoundError, match="main.py, learner.py, metalearner.py not found"):
        import_reference(REPO / "docs")


def test_throughput_row_with_the_reference_side_by_side(reference_dir):
    settings = ThroughputSettings(meta_batch=2, pairs=2, reference=str(reference_dir))
    row = measure_throughput(TINY, Layout(1, 1), settings, matmul_flops_per_s=1e11)
    assert row["layout"] == "1x1" and row["episodes_per_process_per_update"] == 2
    for key in ("train_episodes_per_s", "eval_episodes_per_s", "reference_train_episodes_per_s",
                "reference_eval_episodes_per_s", "train_ratio_median", "eval_ratio_median", "train_fraction_of_floor"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    assert row["train_ratio_min"] <= row["train_ratio_median"] <= row["train_ratio_max"]
    assert row["train_gflop_per_episode"] > row["eval_gflop_per_episode"]
    table = throughput_table([row])
    assert table.count("\n") == 2 and "| tiny | 1x1 | 2 |" in table
