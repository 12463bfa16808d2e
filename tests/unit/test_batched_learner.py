"""The batched learner path (torch.func.vmap over the episodes, the default on CUDA) computes what the
per-episode loop computes: logits, support losses, their gradients w.r.t. theta, query logits in both
batch-norm modes, and the meta-gradient of a whole meta-batch."""

import pytest
import torch
import torch.nn.functional as F

from fewshot_l2l.adaptation import InnerLoop, mean_cross_entropy, run_episodes, support_losses, use_batched_learner
from fewshot_l2l.data.episodes import Episode
from fewshot_l2l.learner import ConvLearner, LearnerConfig
from fewshot_l2l.meta_learner import MetaLearner
from fewshot_l2l.methods.meta_lstm import MetaLSTMConfig

B, N_WAY, N_SUPPORT, N_QUERY = 3, 3, 6, 4


def problem(dtype=torch.float64, channels=2, size=16):
    learner = ConvLearner(LearnerConfig(channels, size, N_WAY, hidden_channels=4))
    generator = torch.Generator().manual_seed(0)
    theta = torch.stack([learner.init_params(generator) for _ in range(B)]).to(dtype)
    theta += 0.1 * torch.randn(theta.shape, generator=generator, dtype=dtype)  # BN gamma/beta away from 1/0
    support = torch.rand(B, N_SUPPORT, channels, size, size, generator=generator, dtype=dtype)
    query = torch.rand(B, N_QUERY, channels, size, size, generator=generator, dtype=dtype)
    labels = torch.randint(0, N_WAY, (B, N_SUPPORT), generator=generator)
    return learner, theta, support, query, labels


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_support_losses_and_their_gradients_match_the_loop(dtype, tolerance):
    learner, theta, support, _, labels = problem(dtype)
    results = []
    for batched in (False, True):
        point = theta.clone().requires_grad_()
        losses = support_losses(learner, point, support, labels, batched=batched)
        (grad,) = torch.autograd.grad(losses.sum(), point)
        results.append((losses, grad))
    (loop_losses, loop_grad), (batched_losses, batched_grad) = results
    assert batched_losses.shape == (B,)
    assert torch.allclose(batched_losses, loop_losses, rtol=tolerance, atol=tolerance)
    assert torch.allclose(batched_grad, loop_grad, rtol=tolerance, atol=tolerance)
    assert loop_grad.abs().max() > 1e-3


@pytest.mark.parametrize("query_bn", ["batch", "support"])
def test_query_logits_match_the_loop(query_bn):
    learner, theta, support, query, _ = problem()
    batched = learner.batched_query_logits(theta, support, query, query_bn)
    loop = torch.stack([learner.query_logits(theta[b], support[b], query[b], query_bn) for b in range(B)])
    assert batched.shape == (B, N_QUERY, N_WAY)
    assert torch.allclose(batched, loop, rtol=1e-10, atol=1e-10)
    assert torch.allclose(learner.batched_logits(theta, query), torch.stack([learner.logits(t, q) for t, q in zip(theta, query)]))
    with pytest.raises(ValueError, match="query_bn"):
        learner.batched_query_logits(theta, support, query, "running")


@pytest.mark.parametrize("query_bn", ["batch", "support"])
def test_meta_batch_loss_accuracy_and_meta_gradient_match_the_loop(query_bn):
    learner, _, support, query, labels = problem(channels=1)
    meta_learner = MetaLearner(learner.init_params(torch.Generator().manual_seed(1)), hidden_size=4).double()
    with torch.no_grad():  # a large input gate so that the inner loop moves the learner
        meta_learner.cell.bias_input.fill_(-1.0)
    episode = Episode(support, labels, query, torch.randint(0, N_WAY, (B, N_QUERY), generator=torch.Generator().manual_seed(2)))
    outcomes = []
    for mode in ("off", "on"):
        meta_learner.zero_grad()
        result = run_episodes(meta_learner, learner, episode, InnerLoop(inner_steps=3, batched_learner=mode), query_bn)
        result.loss.backward()
        outcomes.append((result, [p.grad.clone() for p in meta_learner.parameters()]))
    (loop, loop_grads), (batched, batched_grads) = outcomes
    assert batched.loss.item() == pytest.approx(loop.loss.item(), rel=1e-10)
    assert torch.equal(batched.accuracy, loop.accuracy)
    for loop_grad, batched_grad in zip(loop_grads, batched_grads):
        assert torch.allclose(batched_grad, loop_grad, rtol=1e-8, atol=1e-12)
    assert loop_grads[-1].abs().max() > 0  # theta_init's meta-gradient


def test_the_batched_path_is_chosen_on_cuda_only_unless_forced():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not use_batched_learner("auto", cpu) and use_batched_learner("auto", cuda)
    assert use_batched_learner("on", cpu) and not use_batched_learner("off", cuda)
    with pytest.raises(ValueError, match=r"batched_learner must be one of \('auto', 'on', 'off'\), got 'yes'"):
        use_batched_learner("yes", cpu)
    with pytest.raises(ValueError, match="MetaLSTMConfig: batched_learner"):
        MetaLSTMConfig(batched_learner="yes")


def test_cross_entropy_of_the_batched_path_is_per_episode():
    logits = torch.randn(2, 5, 3)
    labels = torch.randint(0, 3, (2, 5))
    expected = torch.stack([F.cross_entropy(logits[b], labels[b]) for b in range(2)])
    assert torch.allclose(mean_cross_entropy(logits, labels), expected)


def test_the_training_flag_reaches_the_config():
    from fewshot_l2l.cli.train import parse_args

    assert parse_args([]).batched_learner == "auto"
    assert parse_args(["--batched-learner", "on"]).batched_learner == "on"
