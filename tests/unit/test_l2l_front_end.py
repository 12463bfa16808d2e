"""fewshot_l2l.interop.learn2learn.MetaLSTM (the MAML-shaped front end) against the project's own code: its
adapted parameters equal LearnedOptimizer's steps, its meta-gradient equals adaptation.adapt's, both orders.
Needs no learn2learn (the loop shared with learn2learn's MAML is in tests/integration/test_learn2learn.py)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot_l2l.adaptation import InnerLoop, adapt
from fewshot_l2l.interop.learn2learn import MetaLSTMAlgorithm
from fewshot_l2l.learner import ConvLearner, LearnerConfig
from fewshot_l2l.meta_learner import MetaLearner, meta_lstm_from_state_dict
from fewshot_l2l.optim import LearnedOptimizer
from fewshot_l2l.optim.rules import AndrychowiczRule, MetaLSTMRule


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


@pytest.mark.parametrize("rule_class", [MetaLSTMRule, AndrychowiczRule])
def test_adapted_parameters_equal_learned_optimizer_steps(rule_class):
    """k adapt() steps on a clone = k LearnedOptimizer steps of the same rule on a copy (in place, no graph)."""
    model, x, y = mlp(), torch.randn(10, 6), torch.randint(0, 3, (10,))
    meta = MetaLSTMAlgorithm(model, rule=rule_class(hidden_size=5))
    copy_model = copy.deepcopy(model)
    optimizer = LearnedOptimizer(copy_model.parameters(), copy.deepcopy(meta.rule))
    learner = meta.clone()
    for _ in range(3):
        learner.adapt(F.cross_entropy(learner(x), y))
        optimizer.zero_grad()
        loss = F.cross_entropy(copy_model(x), y)
        loss.backward()
        optimizer.step(loss=loss)
    for name, value in copy_model.named_parameters():
        assert torch.allclose(learner.params[name], value, atol=1e-6), name
        assert not torch.equal(value, dict(model.named_parameters())[name])  # the steps moved it
    assert learner.steps == 3
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), meta.module.parameters()))  # theta_0 untouched


@pytest.mark.parametrize("first_order", [True, False])
def test_meta_gradient_equals_adaptation_adapt(first_order):
    """The wrapper around a module that runs ConvLearner on one flat parameter gives the meta-gradient of
    fewshot_l2l.adaptation.adapt (the project's inner loop) for theta_0 and every weight of the rule, to 1e-5."""
    learner = ConvLearner(LearnerConfig(in_channels=1, image_size=8, n_way=3, hidden_channels=4, n_blocks=2))
    meta_learner = MetaLearner(learner.init_params(torch.Generator().manual_seed(1)), hidden_size=5).double()
    with torch.no_grad():  # weights of order 1 and gates away from saturation: every gradient is sizeable
        for name, weight in meta_learner.named_parameters():
            if name != "theta_init":
                weight.normal_(0.0, 0.5)
        meta_learner.cell.bias_forget.fill_(2.0)
        meta_learner.cell.bias_input.fill_(-1.0)
    support_x, support_y = torch.rand(6, 1, 8, 8, dtype=torch.float64), torch.arange(3).repeat(2)
    query_x, query_y = torch.rand(9, 1, 8, 8, dtype=torch.float64), torch.arange(3).repeat(3)

    class FlatConv(nn.Module):  # an nn.Module whose one parameter is ConvLearner's flat vector
        def __init__(self, theta):
            super().__init__()
            self.theta = nn.Parameter(theta.detach().clone())

        def forward(self, images):
            return learner.logits(self.theta, images)

    step = meta_lstm_from_state_dict(meta_learner.state_dict()).double()
    meta = MetaLSTMAlgorithm(FlatConv(meta_learner.theta_init), rule=MetaLSTMRule(step), first_order=first_order)
    clone = meta.clone()
    for _ in range(3):
        clone.adapt(F.cross_entropy(clone(support_x), support_y))
    ours = torch.autograd.grad(F.cross_entropy(clone(query_x), query_y), list(meta.parameters()))
    ours = dict(zip((name for name, _ in meta.named_parameters()), ours))

    theta = adapt(meta_learner, learner, support_x[None], support_y[None], InnerLoop(inner_steps=3, second_order=not first_order))
    names, params = zip(*meta_learner.named_parameters())
    reference = dict(zip(names, torch.autograd.grad(F.cross_entropy(learner.logits(theta[0], query_x), query_y), params)))

    assert len(ours) == len(reference) == 8
    for name, grad in reference.items():
        mine = ours["module.theta" if name == "theta_init" else "rule.meta_lstm." + name]
        assert grad.abs().max() > 1e-4, name  # a gradient that is there to compare
        assert torch.allclose(mine, grad, atol=1e-5, rtol=1e-4), (name, (mine - grad).abs().max())


def test_second_order_differs_from_first_order():
    model, x, y = mlp(), torch.randn(10, 6), torch.randint(0, 3, (10,))
    meta = MetaLSTMAlgorithm(model, hidden_size=5)
    with torch.no_grad():
        meta.rule.meta_lstm.cell.bias_input.fill_(-1.0)
    grads = {}
    for first_order in (True, False):
        clone = meta.clone(first_order=first_order)
        for _ in range(2):
            clone.adapt(F.cross_entropy(clone(x), y))
        grads[first_order] = torch.autograd.grad(F.cross_entropy(clone(x), y), meta.rule.meta_lstm.cell.bias_input)[0]
    assert not torch.allclose(grads[True], grads[False])


def test_frozen_parameters_stay_and_the_learner_owns_no_parameters():
    model = mlp()
    model[0].weight.requires_grad_(False)
    meta = MetaLSTMAlgorithm(model, hidden_size=5)
    clone = meta.clone()
    clone.adapt(F.cross_entropy(clone(torch.randn(4, 6)), torch.zeros(4, dtype=torch.long)))
    assert "0.weight" not in clone.params and set(clone.params) == {"0.bias", "2.weight", "2.bias"}
    assert list(clone.parameters()) == [] and clone.module is model


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
        MetaLSTMAlgorithm("not a module")
    with pytest.raises(TypeError, match="rule must be an UpdateRule"):
        MetaLSTMAlgorithm(mlp(), rule=nn.Linear(1, 1))
    with pytest.raises(ValueError, match="no trainable parameters"):
        MetaLSTMAlgorithm(mlp().requires_grad_(False))
    model = nn.ModuleDict({"used": nn.Linear(2, 2), "unused": nn.Linear(2, 2)})
    meta = MetaLSTMAlgorithm(model, hidden_size=3)
    clone = meta.clone()
    loss = lambda: clone.module["used"](torch.randn(3, 2)).sum()  # noqa: E731  (through theta_0 itself)
    with pytest.raises(ValueError, match="loss must be a scalar tensor"):
        clone.adapt(torch.ones(2))
    with pytest.raises(ValueError, match=r"does not depend on parameter\(s\) unused.weight, unused.bias; pass allow_unused=True"):
        clone.adapt(loss())
    clone.adapt(loss(), allow_unused=True)  # the unused ones get a zero gradient
    assert clone.steps == 1
