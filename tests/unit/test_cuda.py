"""On a CUDA GPU (skipped without one; benchmarks/gpu_check.sh runs them): the batched learner against the per-episode
loop, and whole meta-learning episodes and learned-optimizer steps with the fused Triton step against the plain step.
The Triton kernels' own tests on CUDA tensors are tests/unit/test_triton_step.py."""

import pytest
import torch

from fewshot_l2l.adaptation import run_episodes, support_losses
from fewshot_l2l.data.episodes import Episode
from fewshot_l2l.learner import ConvLearner, LearnerConfig
from fewshot_l2l.meta_learner import MetaLearner
from fewshot_l2l.optim import AndrychowiczRule, LearnedOptimizer, MetaLSTMRule

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
B, N_WAY, N_SUPPORT, N_QUERY = 3, 5, 5, 15


def relative_error(value, reference):
    return ((value - reference).abs().max() / reference.abs().max()).item()


def problem(channels=1, size=28):
    generator = torch.Generator().manual_seed(0)
    learner = ConvLearner(LearnerConfig(channels, size, N_WAY))
    support = torch.rand(B, N_SUPPORT, channels, size, size, generator=generator)
    query = torch.rand(B, N_QUERY, channels, size, size, generator=generator)
    labels = torch.arange(N_WAY).repeat_interleave(N_SUPPORT // N_WAY).expand(B, -1)
    query_labels = torch.arange(N_WAY).repeat_interleave(N_QUERY // N_WAY).expand(B, -1)
    episode = Episode(support.cuda(), labels.cuda(), query.cuda(), query_labels.cuda())
    return learner, episode


def test_batched_learner_matches_the_loop_on_cuda():
    learner, episode = problem()
    theta = torch.stack([learner.init_params(torch.Generator().manual_seed(b)) for b in range(B)]).cuda()
    results = []
    for batched in (False, True):
        point = theta.clone().requires_grad_()
        losses = support_losses(learner, point, episode.support_x, episode.support_y, batched=batched)
        results.append((losses, torch.autograd.grad(losses.sum(), point)[0]))
    (loop_losses, loop_grad), (batched_losses, batched_grad) = results
    assert relative_error(batched_losses, loop_losses) <= 1e-5
    assert relative_error(batched_grad, loop_grad) <= 1e-4


@pytest.mark.parametrize("batched_learner", ["off", "on"])
def test_meta_learning_episodes_with_the_fused_step_equal_the_plain_step_on_cuda(batched_learner):
    learner, episode = problem()
    meta = MetaLearner(learner.init_params(torch.Generator().manual_seed(1))).cuda()
    with torch.no_grad():
        meta.cell.bias_input.fill_(-2.0)  # a large input gate: the inner loop moves the learner
    outcomes = {}
    for kernel in ("fused", "torch"):
        meta.step_kernel = kernel
        meta.zero_grad()
        result = run_episodes(meta, learner, episode, inner_steps=12, batched_learner=batched_learner)
        result.loss.backward()
        outcomes[kernel] = (result.loss.detach(), {name: p.grad.clone() for name, p in meta.named_parameters()})
    assert relative_error(outcomes["fused"][0], outcomes["torch"][0]) <= 1e-5
    for name, expected in outcomes["torch"][1].items():
        assert relative_error(outcomes["fused"][1][name], expected) <= 1e-4, name


@pytest.mark.parametrize("make_rule", [lambda: MetaLSTMRule(), lambda: AndrychowiczRule()], ids=["meta-lstm", "andrychowicz"])
def test_learned_optimizer_fused_equals_plain_on_cuda(make_rule):
    generator = torch.Generator().manual_seed(2)
    x, y = torch.randn(64, 20, generator=generator).cuda(), torch.randint(0, 4, (64,), generator=generator).cuda()
    results = {}
    for kernel in ("fused", "torch"):
        torch.manual_seed(3)
        rule, model = make_rule().cuda(), torch.nn.Sequential(torch.nn.Linear(20, 200), torch.nn.ReLU(), torch.nn.Linear(200, 4)).cuda()
        optimizer = LearnedOptimizer(model.parameters(), rule, step_kernel=kernel)
        for _ in range(5):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step(loss=loss)
        results[kernel] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert relative_error(results["fused"], results["torch"]) <= 1e-5
