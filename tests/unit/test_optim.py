"""LearnedOptimizer against the functional rule on the flat parameter vector (the naive reference)."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot_l2l.meta_learner import MetaLearner
from fewshot_l2l.optim import LearnedOptimizer
from fewshot_l2l.optim.rules import AndrychowiczRule, MetaLSTMRule


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3), nn.Linear(3, 2))


def data():
    torch.manual_seed(1)
    return torch.randn(5, 1, 6, 6), torch.randint(0, 2, (5,))


def make_rule(kind):
    torch.manual_seed(3)
    if kind == "andrychowicz":
        return AndrychowiczRule(hidden_size=4)
    meta = MetaLearner(torch.zeros(1), hidden_size=4)
    with torch.no_grad():  # gates far from their init, so that every term matters
        for p in meta.parameters():
            p.uniform_(-0.5, 0.5)
    return MetaLSTMRule(meta)


def loss_of(model):
    x, y = data()
    return F.cross_entropy(model(x), y)


@pytest.mark.parametrize("kind", ["andrychowicz", "meta-lstm"])
def test_optimizer_equals_functional_rule_on_flat_vector(kind):
    model, rule = make_model(), make_rule(kind)
    model[0].bias.requires_grad_(False)  # frozen
    groups = [{"params": list(model[0].parameters()) + list(model[2].parameters())}, {"params": model[3].parameters()}]
    optimizer = LearnedOptimizer(groups, rule)
    reference = copy.deepcopy(model)
    trainable = [p for p in reference.parameters() if p.requires_grad]  # group order == module order here
    frozen_before = model[0].bias.detach().clone()

    theta = torch.cat([p.detach().flatten() for p in trainable])[None]
    theta_start = theta.clone()
    state = rule.initial_state(theta)
    for _ in range(3):
        optimizer.zero_grad()
        loss = loss_of(model)
        loss.backward()
        optimizer.step(loss=loss)

        ref_loss = loss_of(reference)
        grad = torch.cat([g.flatten() for g in torch.autograd.grad(ref_loss, trainable)])[None]
        with torch.no_grad():
            theta, state = rule(theta, grad, ref_loss.detach().reshape(1), state)
            torch.nn.utils.vector_to_parameters(theta[0], trainable)
    got = torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])
    assert torch.allclose(got, theta[0], atol=1e-6, rtol=0)
    assert not torch.allclose(got, theta_start[0], atol=1e-3)  # the steps did something
    assert torch.equal(model[0].bias, frozen_before)
    assert model[0].bias not in optimizer.state
    assert optimizer.state[model[2].weight]["step"].item() == 3
    first_field = next(iter(optimizer.state[model[2].weight].values()))
    assert first_field.shape[0] == model[2].weight.numel()


def test_parameter_without_gradient_is_skipped_and_keeps_its_state():
    model, rule = make_model(), make_rule("andrychowicz")
    optimizer = LearnedOptimizer(model.parameters(), rule)
    loss_of(model).backward()
    optimizer.step()
    head = model[3].weight
    saved = {k: v.clone() for k, v in optimizer.state[head].items()}
    before = head.detach().clone()
    optimizer.zero_grad(set_to_none=True)
    loss_of(model).backward()
    head.grad = None  # e.g. a branch not used by this loss
    optimizer.step()
    assert torch.equal(head, before)
    assert all(torch.equal(optimizer.state[head][k], v) for k, v in saved.items())
    assert optimizer.state[model[2].weight]["step"].item() == 2


@pytest.mark.parametrize("kind", ["andrychowicz", "meta-lstm"])
def test_state_dict_round_trip_gives_identical_steps(kind):
    model, rule = make_model(), make_rule(kind)
    optimizer = LearnedOptimizer(model.parameters(), rule)

    def train(model, optimizer, steps):
        for _ in range(steps):
            optimizer.zero_grad()
            loss = loss_of(model)
            loss.backward()
            optimizer.step(loss=loss)

    train(model, optimizer, 2)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    restored_model = make_model()
    restored_model.load_state_dict(saved["model"])
    torch.manual_seed(99)  # a rule with other weights: only load_state_dict can make the steps equal
    restored = LearnedOptimizer(restored_model.parameters(), AndrychowiczRule(hidden_size=4) if kind == "andrychowicz" else
                                MetaLSTMRule(MetaLearner(torch.zeros(1), hidden_size=4)))
    restored.load_state_dict(saved["optimizer"])  # restores the rule's weights too
    train(model, optimizer, 2)
    train(restored_model, restored, 2)
    for a, b in zip(model.parameters(), restored_model.parameters()):
        assert torch.equal(a, b)


def test_closure_and_missing_loss():
    model = make_model()
    optimizer = LearnedOptimizer(model.parameters(), make_rule("meta-lstm"))
    loss_of(model).backward()
    with pytest.raises(ValueError, match="LearnedOptimizer.step: the MetaLSTMRule rule reads the loss"):
        optimizer.step()

    def closure():
        optimizer.zero_grad()
        loss = loss_of(model)
        loss.backward()
        return loss

    before = model[3].weight.detach().clone()
    returned = optimizer.step(closure)
    assert torch.is_tensor(returned) and not torch.equal(model[3].weight, before)


def test_update_scale_per_group():
    model, rule = make_model(), make_rule("andrychowicz")
    twin = copy.deepcopy(model)
    full = LearnedOptimizer(twin.parameters(), rule)
    scaled = LearnedOptimizer([{"params": model[0].parameters(), "update_scale": 0.0},
                               {"params": model[2].parameters(), "update_scale": 0.5},
                               {"params": model[3].parameters()}], rule)
    before = copy.deepcopy(model)
    for opt, m in ((full, twin), (scaled, model)):
        loss_of(m).backward()
        opt.step()
    for a, b in zip(model[0].parameters(), before[0].parameters()):
        assert torch.equal(a, b)
    for a, b, c in zip(model[2].parameters(), before[2].parameters(), twin[2].parameters()):
        assert torch.allclose(a - b, 0.5 * (c - b), atol=1e-7)
    for a, c in zip(model[3].parameters(), twin[3].parameters()):
        assert torch.allclose(a, c, atol=1e-7)


def test_bad_arguments():
    with pytest.raises(TypeError, match="LearnedOptimizer: rule must be an UpdateRule"):
        LearnedOptimizer(make_model().parameters(), torch.optim.SGD)
    with pytest.raises(ValueError, match="update_scale"):
        LearnedOptimizer(make_model().parameters(), make_rule("andrychowicz"), update_scale=-1)
