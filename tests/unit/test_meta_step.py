"""The meta-learner's hand-written first-order backward against autograd of the same equations."""

import pytest
import torch

from fewshot_l2l.meta_learner import MetaLearner, meta_lstm_step


def unroll(meta, step, grads, losses, batch):
    theta = meta.initial_theta(batch)
    state = meta.initial_state(theta)
    for grad, loss in zip(grads, losses):
        theta, state = step(theta, grad, loss, state)
    return theta, state


@pytest.mark.parametrize("batch", [1, 3])
def test_first_order_step_gradients_equal_autograd(batch):
    torch.manual_seed(0)
    n_params, steps = 37, 4
    meta = MetaLearner(torch.randn(n_params), hidden_size=5).double()
    with torch.no_grad():  # weights away from their tiny initial range, so that every term matters
        for param in meta.parameters():
            param.add_(0.3 * torch.randn_like(param))
    # Gradients over many magnitudes exercise both branches of the preprocessing.
    grads = [torch.randn(batch, n_params, dtype=torch.float64) * 10.0 ** torch.randint(-6, 1, (batch, n_params))
             for _ in range(steps)]
    losses = [torch.rand(batch, dtype=torch.float64) for _ in range(steps)]
    weights = torch.linspace(-1, 1, batch * n_params, dtype=torch.float64).view(batch, n_params)

    results = []
    for step in (meta.forward, lambda *args: meta_lstm_step(meta.weights(), *args, meta.p)):
        meta.zero_grad()
        theta, state = unroll(meta, step, grads, losses, batch)
        # A loss that reaches every output of the last step, not only theta.
        ((theta * weights).sum() + 0.1 * (state.h ** 2).sum() + 0.01 * state.f.sum() + 0.02 * state.c.sum()).backward()
        results.append((theta.detach(), {name: p.grad.clone() for name, p in meta.named_parameters()}))
    (theta_fast, grads_fast), (theta_ref, grads_ref) = results
    assert torch.allclose(theta_fast, theta_ref, atol=1e-14, rtol=0)
    for name, expected in grads_ref.items():
        assert expected.abs().max() > 0, name
        assert torch.allclose(grads_fast[name], expected, atol=1e-12, rtol=1e-10), name


def test_evaluation_path_matches_training_path():
    torch.manual_seed(1)
    meta = MetaLearner(torch.randn(11), hidden_size=3).double()
    grads = [torch.randn(2, 11, dtype=torch.float64) for _ in range(3)]
    losses = [torch.rand(2, dtype=torch.float64) for _ in range(3)]
    with torch.no_grad():
        theta_eval, _ = unroll(meta, meta.forward, grads, losses, 2)
    theta_train, _ = unroll(meta, meta.forward, grads, losses, 2)
    assert theta_train.requires_grad
    assert torch.equal(theta_eval, theta_train.detach())


def test_cpu_chunks_of_episodes_give_the_same_step_and_gradients():
    torch.manual_seed(2)
    batch, n_params = 5, 13
    meta = MetaLearner(torch.randn(n_params), hidden_size=3).double()
    grads = [torch.randn(batch, n_params, dtype=torch.float64) for _ in range(3)]
    losses = [torch.rand(batch, dtype=torch.float64) for _ in range(3)]
    results = []
    for chunk_rows in (batch * n_params, 2 * n_params):  # one chunk; chunks of 2, 2 and 1 episodes
        meta.cpu_chunk_rows = chunk_rows
        meta.zero_grad()
        theta, state = unroll(meta, meta.forward, grads, losses, batch)
        (theta.sum() + state.c.sum()).backward()
        results.append((theta.detach(), [p.grad.clone() for p in meta.parameters()]))
    (theta_one, grads_one), (theta_chunked, grads_chunked) = results
    assert torch.allclose(theta_chunked, theta_one, atol=1e-14, rtol=0)
    for chunked, one in zip(grads_chunked, grads_one):
        assert torch.allclose(chunked, one, atol=1e-12, rtol=1e-12)
