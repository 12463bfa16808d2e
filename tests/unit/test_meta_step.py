"""The ways MetaLSTM.forward runs the plain step function: checkpointed (first order), no_grad, chunked, torch.func.
(step_kernel="torch": the fused step, which "auto" picks on CPU, is tested in test_fused_step.py.)"""

import pytest
import torch
from torch.func import functional_call

from fewshot_l2l.meta_learner import MetaLearner, MetaLSTMState, meta_lstm_step


def unroll(meta, step, grads, losses, batch):
    theta = meta.initial_theta(batch)
    state = meta.initial_state(theta)
    for grad, loss in zip(grads, losses):
        theta, state = step(theta, grad, loss, state)
    return theta, state


def perturbed_meta_learner(n_params, hidden_size, seed):
    torch.manual_seed(seed)
    meta = MetaLearner(torch.randn(n_params), hidden_size=hidden_size, step_kernel="torch").double()
    with torch.no_grad():  # weights away from their tiny initial range, so that every term matters
        for param in meta.parameters():
            param.add_(0.3 * torch.randn_like(param))
    return meta


def constant_inputs(batch, n_params, steps):
    # Gradients over many magnitudes exercise both branches of the preprocessing.
    grads = [torch.randn(batch, n_params, dtype=torch.float64) * 10.0 ** torch.randint(-6, 1, (batch, n_params))
             for _ in range(steps)]
    return grads, [torch.rand(batch, dtype=torch.float64) for _ in range(steps)]


@pytest.mark.parametrize("batch", [1, 3])
def test_checkpointed_first_order_step_gradients_equal_plain_autograd(batch):
    n_params, steps = 37, 4
    meta = perturbed_meta_learner(n_params, 5, seed=0)
    grads, losses = constant_inputs(batch, n_params, steps)
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
    meta = perturbed_meta_learner(11, 3, seed=1)
    grads, losses = constant_inputs(2, 11, 3)
    with torch.no_grad():  # a state away from zero, the same for both calls
        theta, state = unroll(meta, meta.forward, grads[:2], losses[:2], 2)
    with torch.no_grad():
        theta_eval, state_eval = meta(theta, grads[2], losses[2], state)
    theta_train, state_train = meta(theta, grads[2], losses[2], state)
    assert theta_eval.grad_fn is None and not theta_eval.requires_grad  # no autograd bookkeeping
    assert theta_train.requires_grad
    assert torch.allclose(theta_eval, theta_train.detach(), atol=1e-15, rtol=0)
    for evaluated, trained in zip(state_eval, state_train):
        assert torch.allclose(evaluated, trained.detach(), atol=1e-15, rtol=0)
    assert not torch.allclose(theta_eval, theta)  # the step did something


def test_cpu_chunks_of_episodes_give_the_same_step_and_gradients():
    torch.manual_seed(2)
    batch, n_params = 5, 13
    meta = MetaLearner(torch.randn(n_params), hidden_size=3, step_kernel="torch").double()
    grads = [torch.randn(batch, n_params, dtype=torch.float64) for _ in range(3)]
    losses = [torch.rand(batch, dtype=torch.float64) for _ in range(3)]
    results = []
    for chunk_rows in (batch * n_params, 2 * n_params):  # one chunk; chunks of 2, 2 and 1 episodes
        meta.cpu_chunk_rows = chunk_rows
        meta.zero_grad()
        theta, state = unroll(meta, meta.forward, grads, losses, batch)
        (theta.sum() + state.c.sum()).backward()
        with torch.no_grad():
            theta_eval, _ = unroll(meta, meta.forward, grads, losses, batch)
        results.append((theta.detach(), theta_eval, [p.grad.clone() for p in meta.parameters()]))
    (theta_one, eval_one, grads_one), (theta_chunked, eval_chunked, grads_chunked) = results
    assert torch.allclose(theta_chunked, theta_one, atol=1e-14, rtol=0)
    assert torch.allclose(eval_chunked, eval_one, atol=1e-14, rtol=0)
    for chunked, one in zip(grads_chunked, grads_one):
        assert torch.allclose(chunked, one, atol=1e-12, rtol=1e-12)


def test_torch_func_grad_through_the_step_equals_autograd():
    meta = perturbed_meta_learner(9, 4, seed=3)
    grads, losses = constant_inputs(2, 9, 3)
    direction = torch.randn(2, 9, dtype=torch.float64)

    def meta_loss(params):
        theta = params["theta_init"].expand(2, -1)
        state = meta.initial_state(theta)
        for grad, loss in zip(grads, losses):
            theta, state = functional_call(meta, params, (theta, grad, loss, state))
        return (theta * direction).sum() + state.c.sum()

    params = {name: param.detach() for name, param in meta.named_parameters()}
    functional = torch.func.grad(meta_loss)(params)
    meta_loss(dict(meta.named_parameters())).backward()
    for name, param in meta.named_parameters():
        assert param.grad.abs().max() > 0, name
        assert torch.allclose(functional[name], param.grad, atol=1e-13, rtol=1e-11), name


def test_torch_func_vmap_over_thetas_equals_the_batched_call():
    meta = perturbed_meta_learner(7, 3, seed=4)
    thetas = torch.randn(4, 2, 7, dtype=torch.float64)  # 4 sets of 2 episodes
    grad, loss = torch.randn(2, 7, dtype=torch.float64), torch.rand(2, dtype=torch.float64)
    state = MetaLSTMState(*(0.5 * torch.randn_like(t) for t in meta.initial_state(thetas[0])))

    def step(theta):
        return meta(theta, grad, loss, state)

    mapped, mapped_state = torch.func.vmap(step)(thetas)
    batched, batched_state = meta(thetas.reshape(8, 7), grad.repeat(4, 1), loss.repeat(4),
                                  MetaLSTMState(*(t.repeat(4, *([1] * (t.dim() - 1))) for t in state)))
    assert torch.allclose(mapped.reshape(8, 7), batched, atol=1e-14, rtol=0)
    assert torch.allclose(mapped_state.h.reshape(8, 7, 3), batched_state.h, atol=1e-14, rtol=0)
    mapped.sum().backward()
    vmapped_grads = [p.grad.clone() for p in meta.parameters() if p.grad is not None]
    meta.zero_grad()
    batched.sum().backward()
    batched_grads = [p.grad for p in meta.parameters() if p.grad is not None]
    assert len(vmapped_grads) == len(batched_grads) == 7  # all but theta_init, which thetas replace
    for vmapped, expected in zip(vmapped_grads, batched_grads):
        assert torch.allclose(vmapped, expected, atol=1e-12, rtol=1e-12)
