"""LearnedOptimizer against the functional rule on the flat parameter vector (the naive reference)."""

import copy
import io
import math

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


def test_lr_per_group():
    model, rule = make_model(), make_rule("andrychowicz")
    twin = copy.deepcopy(model)
    full = LearnedOptimizer(twin.parameters(), rule)
    scaled = LearnedOptimizer([{"params": model[0].parameters(), "lr": 0.0},
                               {"params": model[2].parameters(), "lr": 0.5},
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
    with pytest.raises(ValueError, match=r"lr \(the scale of the rule's proposed change\) must be >= 0, got -1"):
        LearnedOptimizer(make_model().parameters(), make_rule("andrychowicz"), lr=-1)
    with pytest.raises(ValueError, match="must be >= 0, got -0.5"):
        LearnedOptimizer([{"params": make_model().parameters(), "lr": -0.5}], make_rule("andrychowicz"))
    with pytest.raises(TypeError, match="update_scale was renamed lr .*pass lr="):
        LearnedOptimizer(make_model().parameters(), make_rule("andrychowicz"), update_scale=0.5)
    with pytest.raises(ValueError, match="group key update_scale was renamed lr"):
        LearnedOptimizer([{"params": make_model().parameters(), "update_scale": 0.5}], make_rule("andrychowicz"))
    with pytest.raises(TypeError, match="unexpected keyword argument.*momentum"):
        LearnedOptimizer(make_model().parameters(), make_rule("andrychowicz"), momentum=0.9)


def test_state_dict_saved_with_update_scale_still_loads():
    model, rule = make_model(), make_rule("andrychowicz")
    optimizer = LearnedOptimizer(model.parameters(), rule, lr=0.25)
    loss_of(model).backward()
    optimizer.step()
    old = optimizer.state_dict()
    old["param_groups"] = [{("update_scale" if k == "lr" else k): v for k, v in g.items()} for g in old["param_groups"]]
    restored = LearnedOptimizer(make_model().parameters(), make_rule("andrychowicz"))
    restored.load_state_dict(old)
    assert restored.param_groups[0]["lr"] == 0.25 and "update_scale" not in restored.param_groups[0]


def _one_cycle_lr(step, max_lr, total_steps, div_factor, final_div_factor, pct_start):
    """OneCycleLR's two-phase linear schedule (Smith & Topin), written out."""
    initial, peak_step = max_lr / div_factor, pct_start * total_steps - 1
    if step <= peak_step:
        return initial + (max_lr - initial) * step / peak_step
    final = initial / final_div_factor
    return max_lr + (final - max_lr) * (step - peak_step) / (total_steps - 1 - peak_step)


SCHEDULES = {  # name -> (scheduler for an optimizer whose lr starts at 1.0, the lr it should give at step t)
    "StepLR": (lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5), lambda t: 0.5 ** (t // 2)),
    "CosineAnnealingLR": (lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5, eta_min=0.1),
                          lambda t: 0.1 + 0.9 * (1 + math.cos(math.pi * t / 5)) / 2),
    # cycle_momentum=False: the optimizer has no momentum for OneCycleLR to cycle.
    "OneCycleLR": (lambda opt: torch.optim.lr_scheduler.OneCycleLR(
                       opt, max_lr=2.0, total_steps=6, pct_start=0.5, anneal_strategy="linear", div_factor=4.0,
                       final_div_factor=5.0, cycle_momentum=False),
                   lambda t: _one_cycle_lr(t, 2.0, 6, 4.0, 5.0, 0.5)),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_lr_schedulers_scale_the_rule_step(name):
    make_scheduler, expected_lr = SCHEDULES[name]
    model, rule = make_model(), make_rule("meta-lstm")
    optimizer = LearnedOptimizer(model.parameters(), rule)
    scheduler = make_scheduler(optimizer)
    params = list(model.parameters())
    state = rule.initial_state(torch.cat([p.detach().flatten() for p in params])[None])
    seen = []
    for step in range(6):
        lr = optimizer.param_groups[0]["lr"]
        seen.append(lr)
        assert lr == pytest.approx(expected_lr(step), rel=1e-9, abs=1e-12)
        optimizer.zero_grad()
        loss = loss_of(model)
        loss.backward()
        with torch.no_grad():  # the reference: the functional rule on the flat vector, then theta + lr * (proposal - theta)
            theta = torch.cat([p.detach().flatten() for p in params])[None]
            grad = torch.cat([p.grad.flatten() for p in params])[None]
            proposal, state = rule(theta, grad, loss.detach().reshape(1), state)
            expected = theta + lr * (proposal - theta)
        optimizer.step(loss=loss)
        scheduler.step()
        got = torch.cat([p.detach().flatten() for p in params])[None]
        assert torch.allclose(got, expected, atol=1e-6, rtol=0)
        assert not torch.allclose(got, theta, atol=1e-4)  # a real step, whose size the schedule sets
    assert len(set(seen)) >= 3  # the schedule moved the lr


def test_step_writes_parameters_in_place():
    model = make_model()
    optimizer = LearnedOptimizer(model.parameters(), make_rule("andrychowicz"))
    storage = [p.data_ptr() for p in model.parameters()]
    before = [p.detach().clone() for p in model.parameters()]
    loss_of(model).backward()
    optimizer.step()
    assert [p.data_ptr() for p in model.parameters()] == storage  # same tensors, new values: views and tying survive
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
