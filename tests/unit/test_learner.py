import pytest
import torch
from torch import nn

from fewshot_l2l.learner import ConvLearner, LearnerConfig


def reference_module(learner: ConvLearner, theta: torch.Tensor) -> nn.Sequential:
    """The same CNN built from torch.nn layers, loaded with the flat parameters."""
    cfg = learner.config
    layers, channels = [], cfg.in_channels
    for _ in range(cfg.n_blocks):
        layers += [nn.Conv2d(channels, cfg.hidden_channels, 3, padding=1, bias=False),
                   nn.BatchNorm2d(cfg.hidden_channels, track_running_stats=False), nn.ReLU(), nn.MaxPool2d(2)]
        channels = cfg.hidden_channels
    layers += [nn.Flatten(), nn.Linear(learner.feature_dim, cfg.n_way)]
    model = nn.Sequential(*layers).double()
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(theta, model.parameters())
    return model


@pytest.mark.parametrize("shape", [(1, 28), (3, 84), (3, 21)])
def test_forward_matches_torch_nn_reference(shape):
    channels, size = shape
    learner = ConvLearner(LearnerConfig(channels, size, n_way=5, hidden_channels=4))
    theta = learner.init_params(torch.Generator().manual_seed(0)).double()
    theta += 0.1 * torch.randn_like(theta)  # BN gamma/beta away from 1/0
    images = torch.rand(6, channels, size, size, dtype=torch.float64)
    expected = reference_module(learner, theta)(images)
    assert torch.allclose(learner.logits(theta, images), expected, atol=1e-10)
    assert learner.n_params == sum(p.numel() for p in reference_module(learner, theta).parameters())


def test_parameter_count_of_the_paper_learner():
    learner = ConvLearner(LearnerConfig(1, 28, 5))
    convs = 32 * 9 + 3 * 32 * 32 * 9
    assert learner.n_params == convs + 4 * 2 * 32 + 32 * 5 + 5
    mini = ConvLearner(LearnerConfig(3, 84, 5))
    assert mini.feature_dim == 32 * 5 * 5


def test_support_statistics_mode_normalizes_query_with_support_stats():
    learner = ConvLearner(LearnerConfig(1, 16, 3, hidden_channels=2, n_blocks=1))
    theta = learner.init_params().double()
    support = torch.rand(4, 1, 16, 16, dtype=torch.float64)
    query = torch.rand(5, 1, 16, 16, dtype=torch.float64) + 1.0  # different statistics
    weight, gamma, beta, head_w, head_b = learner.unflatten(theta)
    conv_s = torch.nn.functional.conv2d(support, weight, padding=1)
    mean, var = conv_s.mean((0, 2, 3)), conv_s.var((0, 2, 3), unbiased=False)
    conv_q = torch.nn.functional.conv2d(query, weight, padding=1)
    normed = (conv_q - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-5)
    x = torch.nn.functional.max_pool2d(torch.relu(normed * gamma[:, None, None] + beta[:, None, None]), 2)
    expected = x.flatten(1) @ head_w.t() + head_b
    got = learner.query_logits(theta, support, query, query_bn="support")
    assert torch.allclose(got, expected, atol=1e-10)
    transductive = learner.query_logits(theta, support, query, query_bn="batch")
    assert not torch.allclose(got, transductive, atol=1e-3)
    # Support mode: a query image's prediction does not depend on the other query images.
    alone = learner.query_logits(theta, support, query[:1], query_bn="support")
    assert torch.allclose(alone, got[:1], atol=1e-10)


def test_bad_configuration_and_theta_are_rejected():
    with pytest.raises(ValueError, match="too small"):
        ConvLearner(LearnerConfig(1, 8, 5))
    with pytest.raises(ValueError, match="n_way"):
        ConvLearner(LearnerConfig(1, 28, 0))
    learner = ConvLearner(LearnerConfig(1, 28, 5))
    with pytest.raises(ValueError, match="theta must have shape"):
        learner.unflatten(torch.zeros(3))
    with pytest.raises(ValueError, match="query_bn"):
        learner.query_logits(learner.init_params(), torch.rand(2, 1, 28, 28), torch.rand(2, 1, 28, 28), "running")
