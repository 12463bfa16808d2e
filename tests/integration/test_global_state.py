"""Library calls leave process-wide state alone: the global generators, the C allocator.

Seeding and allocator tuning belong to the command-line front ends (fewshot_l2l.cli), which make them explicitly.
"""

import ctypes
import random

import pytest
import torch

import fewshot_l2l.devices as devices
from fewshot_l2l.checkpoints import load_checkpoint
from fewshot_l2l.cli import evaluate as evaluate_cli
from fewshot_l2l.evaluation import evaluate
from fewshot_l2l.learner import ConvLearner, LearnerConfig
from fewshot_l2l.meta_learner import MetaLearner
from fewshot_l2l.methods import build_method, new_learner
from fewshot_l2l.methods.meta_lstm import MetaLSTMConfig
from fewshot_l2l.training import meta_train


@pytest.fixture
def allocator_calls(monkeypatch):
    """Every ``ctypes.CDLL`` load (tune_cpu_allocator's first step), with the tuning not yet done in this process."""
    calls = []
    real = ctypes.CDLL
    monkeypatch.setattr(devices, "_ALLOCATOR_TUNED", False)
    monkeypatch.setattr(ctypes, "CDLL", lambda name, *a, **k: calls.append(name) or real(name, *a, **k))
    return calls


def config(tmp_path, **overrides):
    values = dict(n_way=3, k_shot=1, n_query=2, inner_steps=2, meta_batch=2, episodes=4, hidden_size=4,
                  hidden_channels=4, val_every=4, val_episodes=2, device="cpu", out=str(tmp_path / "run"), seed=5)
    values.update(overrides)
    return MetaLSTMConfig(**values)


def build_meta_learner(config: MetaLSTMConfig) -> MetaLearner:
    return build_method(config, new_learner(config, (1, 16, 16))).meta_learner


def global_rng_states():
    return torch.random.get_rng_state(), random.getstate()


def assert_unchanged(before):
    torch_state, python_state = before
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert random.getstate() == python_state


def test_build_method_is_seeded_by_the_config_alone(tmp_path):
    torch.manual_seed(123)
    random.seed(123)
    before = global_rng_states()
    first = build_meta_learner(config(tmp_path))
    assert_unchanged(before)
    torch.manual_seed(999)  # other global state: same models
    second = build_meta_learner(config(tmp_path))
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    other_seed = build_meta_learner(config(tmp_path, seed=6))
    assert not torch.equal(first.cell.weight_forget, other_seed.cell.weight_forget)


def test_build_method_gives_the_models_of_the_global_seeding_it_replaced(tmp_path):
    """What building the models did before: seed the global generators with config.seed, then construct."""
    meta_learner = build_meta_learner(config(tmp_path))
    learner = ConvLearner(LearnerConfig(1, 16, 3, 4))
    torch.manual_seed(5)
    reference = MetaLearner(learner.init_params(torch.Generator().manual_seed(5)), 4)
    for (name, a), b in zip(meta_learner.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name


def test_meta_train_load_checkpoint_and_evaluate_leave_global_state_alone(tiny_data, tmp_path, allocator_calls):
    before = global_rng_states()
    summary = meta_train(config(tmp_path), progress=False)
    evaluate(load_checkpoint(summary["best"]).method, tiny_data["test"], n_episodes=2, progress=False)
    assert_unchanged(before)
    assert allocator_calls == []


def test_front_ends_make_the_process_wide_settings(tiny_data, tmp_path, allocator_calls, monkeypatch, capsys):
    summary = meta_train(config(tmp_path), progress=False)
    evaluate_cli.main(["--checkpoint", summary["best"], "--episodes", "2", "--device", "cpu", "--json"])
    assert allocator_calls == ["libc.so.6"]
    assert '"n_episodes": 2' in capsys.readouterr().out
