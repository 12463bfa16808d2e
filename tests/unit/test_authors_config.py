"""The authors' configuration (--authors-config): each of its settings is a real code path, checked against a
hand computation; older checkpoints (without the fields) load with the values they were trained with."""

import pytest
import torch
import torch.nn.functional as F

from fewshot_l2l import learner as learner_module
from fewshot_l2l.adaptation import InnerLoop, adapt
from fewshot_l2l.cli.train import parse_args
from fewshot_l2l.learner import ConvLearner, LearnerConfig
from fewshot_l2l.meta_learner import MetaLearner
from fewshot_l2l.methods import build_method, new_learner
from fewshot_l2l.methods.meta_lstm import AUTHORS_CONFIG, MetaLSTMConfig, authors_config


@pytest.mark.parametrize("eps", [1e-5, 1e-3])
def test_bn_eps_reaches_batch_norm_and_the_support_statistics_path(monkeypatch, eps):
    learner = ConvLearner(LearnerConfig(1, 16, 3, hidden_channels=2, n_blocks=1, bn_eps=eps))
    seen = []
    real = F.batch_norm
    monkeypatch.setattr(learner_module.F, "batch_norm", lambda *a, **k: seen.append(k["eps"]) or real(*a, **k))
    theta = learner.init_params().double()
    support, query = torch.rand(4, 1, 16, 16, dtype=torch.float64), torch.rand(5, 1, 16, 16, dtype=torch.float64)
    learner.logits(theta, support)
    assert seen == [eps]
    weight, gamma, beta, head_w, head_b = learner.unflatten(theta)
    conv_s, conv_q = (F.conv2d(x, weight, padding=1) for x in (support, query))
    mean, var = conv_s.mean((0, 2, 3)), conv_s.var((0, 2, 3), unbiased=False)
    normed = (conv_q - mean[:, None, None]) / torch.sqrt(var[:, None, None] + eps)
    x = F.max_pool2d(torch.relu(normed * gamma[:, None, None] + beta[:, None, None]), 2)
    assert torch.allclose(learner.query_logits(theta, support, query, "support"), x.flatten(1) @ head_w.t() + head_b,
                          atol=1e-12)


def test_forget_bias_is_drawn_from_the_given_range():
    # The same random number u: U(4, 6) draws 4 + 2u, U(4, 5) draws 4 + u.
    def bias(config):
        torch.manual_seed(7)
        return build_method(config, new_learner(config, (1, 16, 16))).meta_learner.cell.bias_forget.item()
    ours, theirs = bias(MetaLSTMConfig(hidden_channels=2)), bias(authors_config(MetaLSTMConfig(hidden_channels=2)))
    assert 4.0 <= theirs < 5.0 and 4.0 <= ours < 6.0
    assert ours - 4.0 == pytest.approx(2 * (theirs - 4.0), abs=1e-6)
    with pytest.raises(ValueError, match="forget_bias_init"):
        MetaLSTMConfig(forget_bias_init=(5.0, 4.0))


def test_divide_grad_feeds_the_meta_learner_the_gradient_over_the_batch_size():
    learner = ConvLearner(LearnerConfig(1, 16, 3, hidden_channels=2, n_blocks=1))
    meta_learner = MetaLearner(learner.init_params(torch.Generator().manual_seed(0)), hidden_size=3)
    support_x, support_y = torch.rand(1, 6, 1, 16, 16), torch.tensor([[0, 1, 2, 0, 1, 2]])
    with torch.no_grad():
        got = adapt(meta_learner, learner, support_x, support_y, InnerLoop(inner_steps=1, divide_grad=True))
        plain = adapt(meta_learner, learner, support_x, support_y, 1)
    # By hand: the batch-mean cross-entropy's gradient, divided by the 6 support images, into one meta-learner step.
    theta = meta_learner.initial_theta(1).detach().requires_grad_()
    loss = F.cross_entropy(learner.logits(theta[0], support_x[0]), support_y[0])
    (grad,) = torch.autograd.grad(loss, theta)
    with torch.no_grad():
        expected, _ = meta_learner(theta, grad / 6, loss[None], meta_learner.initial_state(theta))
    assert torch.allclose(got, expected, atol=1e-7)
    assert not torch.allclose(got, plain, atol=1e-6)


def test_authors_config_is_one_flag_and_older_checkpoints_load_with_their_values():
    config = parse_args(["--authors-config", "--k-shot", "5"])
    for key, value in AUTHORS_CONFIG.items():
        assert getattr(config, key) == value
    assert config.k_shot == 5 and config.val_query_bn == "support"
    plain = parse_args([])
    assert (plain.meta_batch, plain.forget_bias_init, plain.divide_grad, plain.bn_eps) == (4, (4.0, 6.0), False, 1e-5)
    old = {key: value for key, value in vars(MetaLSTMConfig(query_bn="support")).items()
           if key not in ("val_query_bn", "forget_bias_init", "divide_grad", "bn_eps")}
    loaded = MetaLSTMConfig.from_dict(old)
    assert (loaded.val_query_bn, loaded.forget_bias_init, loaded.divide_grad, loaded.bn_eps) == ("support", (4.0, 6.0), False, 1e-5)
    assert MetaLSTMConfig.from_dict({}).val_query_bn == "batch"
