"""Problem distributions: losses against naive references, determinism, disjoint splits."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot_l2l.optim.problems import MLPProblems, QuadraticProblems, make_problems


@pytest.fixture(scope="module")
def tiny_mlp_problems():
    return MLPProblems(classes={"train": 12, "val": 10, "test": 10}, images_per_class=13, image_size=28, batch_size=128)


def test_quadratic_loss_is_norm_of_residual():
    problems = QuadraticProblems().sample(3, seed=5)
    theta = torch.randn(3, 10)
    for k in range(3):
        expected = ((problems.weight[k] @ theta[k] - problems.target[k]) ** 2).sum()
        assert problems.loss(theta, 0)[k].item() == pytest.approx(expected.item(), rel=1e-5)
    assert problems.initial_theta().abs().max() < 0.1  # theta_0 ~ N(0, 0.01^2)


def test_draws_are_deterministic_and_splits_disjoint():
    distribution = QuadraticProblems()
    a, b = distribution.sample(4, seed=1), distribution.sample(4, seed=1)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.initial_theta(), b.initial_theta())
    assert not torch.equal(a.weight, distribution.sample(4, seed=2).weight)
    assert not torch.equal(a.weight, distribution.sample(4, seed=1, split="test").weight)
    with pytest.raises(ValueError, match="split must be one of"):
        distribution.sample(4, seed=1, split="validation")


def test_mlp_loss_matches_nn_reference(tiny_mlp_problems):
    problems = tiny_mlp_problems.sample(2, seed=0, split="tune")
    theta = problems.initial_theta()
    assert theta.shape == (2, 784 * 20 + 20 + 20 * 10 + 10)
    x, y = problems.batch(3)
    assert x.shape == (2, 128, 784) and y.max() < 10
    for k in range(2):
        net = nn.Sequential(nn.Linear(784, 20), nn.Sigmoid(), nn.Linear(20, 10))
        w1, b1, w2, b2 = problems.unflatten(theta[k : k + 1])
        with torch.no_grad():
            net[0].weight.copy_(w1[0].t()), net[0].bias.copy_(b1[0, 0]), net[2].weight.copy_(w2[0].t()), net[2].bias.copy_(b2[0, 0])
        expected = F.cross_entropy(net(x[k]), y[k])
        assert problems.loss(theta, 3)[k].item() == pytest.approx(expected.item(), rel=1e-5)
    x_again, _ = problems.batch(3)
    assert torch.equal(x, x_again) and not torch.equal(x, problems.batch(4)[0])


def test_mlp_problems_use_ten_classes_from_their_split(tiny_mlp_problems):
    problems = tiny_mlp_problems.sample(3, seed=0, split="test")
    _, class_members = tiny_mlp_problems.splits["test"]
    assert problems.members.shape == (3, 10 * 13)
    for k in range(3):  # every problem holds 10 whole classes, labelled 0..9 in order
        classes = problems.members[k].view(10, 13)
        for c in range(10):
            row = (class_members == classes[c, 0]).any(dim=1).nonzero().item()
            assert torch.equal(torch.sort(classes[c]).values, torch.sort(class_members[row]).values)
    assert torch.equal(problems.problem_labels[0], torch.arange(10).repeat_interleave(13))


def test_bad_arguments():
    with pytest.raises(ValueError, match="make_problems: unknown problem 'rosenbrock'"):
        make_problems("rosenbrock")
    with pytest.raises(ValueError, match="MLPProblems: batch_size 128 exceeds"):
        MLPProblems(classes={"train": 10, "val": 10, "test": 10}, images_per_class=5)
    with pytest.raises(ValueError, match="n must be >= 1"):
        QuadraticProblems().sample(0, seed=0)
