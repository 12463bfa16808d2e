"""Problem distributions: losses against naive references, determinism, disjoint splits."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot_l2l.optim.problems import MLPProblems, QuadraticProblems
from fewshot_l2l.optim import make_problems


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


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_deeper_wider_mlp_matches_nn_reference(activation):
    distribution = MLPProblems(hidden=6, layers=2, activation=activation, classes={"train": 10, "val": 10, "test": 10},
                               images_per_class=3, image_size=8, batch_size=16)
    problems = distribution.sample(2, seed=1)
    theta = problems.initial_theta()
    assert theta.shape == (2, 64 * 6 + 6 + 6 * 6 + 6 + 6 * 10 + 10) and problems.layout.sizes == (384, 6, 36, 6, 60, 10)
    x, y = problems.batch(0)
    act = nn.ReLU() if activation == "relu" else nn.Sigmoid()
    for k in range(2):
        net = nn.Sequential(nn.Linear(64, 6), act, nn.Linear(6, 6), act, nn.Linear(6, 10))
        weights = problems.unflatten(theta[k : k + 1])
        with torch.no_grad():
            for layer, (w, b) in zip(net[::2], zip(weights[::2], weights[1::2])):
                layer.weight.copy_(w[0].t()), layer.bias.copy_(b[0, 0])
        assert problems.loss(theta, 0)[k].item() == pytest.approx(F.cross_entropy(net(x[k]), y[k]).item(), rel=1e-5)
    with pytest.raises(ValueError, match="activation must be one of"):
        MLPProblems(activation="tanh")
    assert make_problems("mlp", hidden=40, layers=2, activation="relu", classes={"train": 10, "val": 10, "test": 10},
                         images_per_class=13).layer_sizes == (784, 40, 40, 10)
    with pytest.raises(ValueError, match="quadratic takes no option"):
        make_problems("quadratic", hidden=3)


def test_convnet_loss_matches_nn_reference():
    from fewshot_l2l.optim.convnet import ConvNetProblems

    distribution = ConvNetProblems(classes={"train": 10, "val": 10, "test": 10}, images_per_class=3, image_size=16,
                                   batch_size=12, channels=4, conv_layers=2, hidden=5)
    problems = distribution.sample(3, seed=2, split="test")
    theta = problems.initial_theta() + 0.1 * torch.randn(3, distribution.n_params)  # batch norm away from (1, 0) too
    layout = problems.layout
    assert layout.kinds == ("conv",) * 6 + ("fc",) * 4
    assert layout.sizes == (36, 4, 4, 144, 4, 4, 4 * 4 * 4 * 5, 5, 50, 10)
    assert torch.equal(problems.initial_theta()[:, 36:40], torch.ones(3, 4))  # batch-norm scales start at 1
    x, y = problems.batch(1)
    for k in range(3):
        pieces = [piece[k] for piece in problems.tensors(theta)]
        net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Flatten(), nn.Linear(64, 5), nn.ReLU(), nn.Linear(5, 10)).train()
        with torch.no_grad():
            for conv, bn, (w, g, b) in ((net[0], net[1], pieces[0:3]), (net[4], net[5], pieces[3:6])):
                conv.weight.copy_(w.view_as(conv.weight)), bn.weight.copy_(g), bn.bias.copy_(b)
            for linear, w, b in ((net[9], pieces[6], pieces[7]), (net[11], pieces[8], pieces[9])):
                linear.weight.copy_(w.view(linear.in_features, linear.out_features).t()), linear.bias.copy_(b)
        expected = F.cross_entropy(net(x[k].view(12, 1, 16, 16)), y[k])
        assert problems.loss(theta, 1)[k].item() == pytest.approx(expected.item(), rel=1e-4)
    with pytest.raises(ValueError, match="too small"):
        ConvNetProblems(image_size=4, conv_layers=3)
