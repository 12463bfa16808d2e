"""Gate statistics (fewshot_l2l.gates) against meta-learners whose gates are known."""

import math

import pytest
import torch

from fewshot_l2l.adaptation import adapt
from fewshot_l2l.data.episodes import Episode, EpisodeSampler
from fewshot_l2l.gates import STATISTICS, gate_statistics
from fewshot_l2l.learner import ConvLearner, LearnerConfig
from fewshot_l2l.meta_learner import MetaLearner

INNER_STEPS = 3


@pytest.fixture
def setup(tiny_splits):
    learner = ConvLearner(LearnerConfig(1, 16, 3, hidden_channels=4))
    meta_learner = MetaLearner(learner.init_params(torch.Generator().manual_seed(0)), hidden_size=4)
    sampler = EpisodeSampler(tiny_splits["test"], 3, 1, 2, seed=0)
    return meta_learner, learner, [sampler.sample(2), sampler.sample(3)]


def set_gates(meta_learner, forget, input_, theta_forget=0.0, theta_input=0.0):
    """Gates ``f_t = theta_forget * theta_{t-1} + forget`` and ``i_t = theta_input * theta_{t-1} + input_``:
    zero weight on layer 1's output and on the previous gate."""
    cell, hidden = meta_learner.cell, meta_learner.hidden_size
    with torch.no_grad():
        cell.weight_forget.zero_()[hidden] = theta_forget
        cell.weight_input.zero_()[hidden] = theta_input
        cell.bias_forget.fill_(forget)
        cell.bias_input.fill_(input_)


def test_constant_gates_give_their_value_with_no_spread(setup):
    meta_learner, learner, episodes = setup
    set_gates(meta_learner, forget=2.0, input_=-3.0)
    stats = gate_statistics(meta_learner, learner, episodes, INNER_STEPS)
    assert stats.names == [name for name, _ in learner.param_shapes] and stats.n_episodes == 5
    for gate, value in ((stats.input, 1 / (1 + math.exp(3.0))), (stats.forget, 1 / (1 + math.exp(-2.0)))):
        assert set(gate) == set(STATISTICS)
        for name in ("mean", "min", "max"):
            assert gate[name].shape == (INNER_STEPS, len(stats.names))
            assert torch.allclose(gate[name], torch.full_like(gate[name], value), atol=1e-7), name
        assert float(gate["std"].max()) < 1e-6


def test_statistics_per_step_and_tensor_equal_a_direct_computation(setup):
    """Gates that depend on theta_{t-1}: recompute them from adapt's parameters after t - 1 steps."""
    meta_learner, learner, episodes = setup
    set_gates(meta_learner, forget=1.0, input_=-2.0, theta_forget=3.0, theta_input=-5.0)
    stats = gate_statistics(meta_learner, learner, episodes, INNER_STEPS)
    with torch.no_grad():
        for t in range(INNER_STEPS):
            thetas = [adapt(meta_learner, learner, e.support_x, e.support_y, t) if t else meta_learner.initial_theta(e.n_episodes)
                      for e in episodes]
            theta = torch.cat(thetas)  # [5, P]: theta_{t} that step t + 1 starts from
            gates = {"forget": torch.sigmoid(3.0 * theta + 1.0), "input": torch.sigmoid(-5.0 * theta - 2.0)}
            for gate_name, gate in gates.items():
                for k, piece in enumerate(torch.split(gate.double(), learner.param_sizes, dim=1)):
                    got = {s: float(getattr(stats, gate_name)[s][t, k]) for s in STATISTICS}
                    want = {"mean": piece.mean(), "std": piece.std(correction=0), "min": piece.min(), "max": piece.max()}
                    for s in STATISTICS:
                        assert got[s] == pytest.approx(float(want[s]), abs=1e-6), (gate_name, t, stats.names[k], s)
    assert float(stats.forget["std"].max()) > 1e-3  # the check above is not about constants


def test_batches_merge_to_the_statistics_of_one_batch(setup):
    meta_learner, learner, episodes = setup
    set_gates(meta_learner, forget=1.0, input_=-2.0, theta_forget=3.0, theta_input=-5.0)
    whole = Episode(*(torch.cat([getattr(e, f) for e in episodes]) for f in ("support_x", "support_y", "query_x", "query_y")))
    merged = gate_statistics(meta_learner, learner, episodes, INNER_STEPS)
    single = gate_statistics(meta_learner, learner, [whole], INNER_STEPS)
    for gate in ("input", "forget"):
        for s in STATISTICS:
            assert torch.allclose(getattr(merged, gate)[s], getattr(single, gate)[s], atol=1e-7), (gate, s)
    assert "| conv0.weight |" in merged.table() and "input gate, step 3" in merged.table()


def test_errors(setup):
    meta_learner, learner, _ = setup
    with pytest.raises(ValueError, match="no episodes"):
        gate_statistics(meta_learner, learner, [], INNER_STEPS)
    other = ConvLearner(LearnerConfig(1, 16, 5, hidden_channels=4))
    with pytest.raises(ValueError, match="coordinates, the learner"):
        gate_statistics(meta_learner, other, [], INNER_STEPS)
