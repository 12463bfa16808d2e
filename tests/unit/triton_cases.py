"""The Triton kernels of the fused steps (fewshot_l2l.kernels.triton_step, the CUDA backend) against the plain steps,
meta_learner.meta_lstm_step and optim.rules.AndrychowiczRule: one step's outputs and every gradient, an unroll's
meta-gradient, both branches of the preprocessing.

Run by test_triton_step.py: on CUDA tensors where a GPU is present (benchmarks/gpu_check.sh), otherwise on CPU
tensors under Triton's interpreter in a fresh process (the interpreter is chosen when Triton's own jit functions,
tl.sigmoid and tl.sum among them, are decorated, i.e. when triton is first imported, which a test session has
often done already). Directly: TRITON_INTERPRET=1 .venv/bin/python -m pytest -q tests/unit/triton_cases.py

Errors are relative to the largest entry of the reference tensor: max |Triton - plain| / max |plain|."""

import importlib
import os
import sys

import pytest
import torch

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
CUDA = torch.cuda.is_available() and not INTERPRETED
if not (CUDA or INTERPRETED):
    pytest.skip("no GPU: run these under Triton's interpreter (TRITON_INTERPRET=1; test_triton_step.py does)",
                allow_module_level=True)
triton = pytest.importorskip("triton")

from fewshot_l2l import kernels  # noqa: E402
from fewshot_l2l.meta_learner import MetaLearner, MetaLSTMState, fused_meta_lstm_step, meta_lstm_step  # noqa: E402
from fewshot_l2l.optim.rules import AndrychowiczRule, AndrychowiczState  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"
TRITON_BACKEND = kernels.BACKENDS["cuda"]


@pytest.fixture(autouse=True)
def triton_backend(monkeypatch):
    """The fused operator on DEVICE runs the Triton kernels (on CPU tensors: interpreted)."""
    if not CUDA:
        module = sys.modules.get(TRITON_BACKEND)
        if module is not None and type(module._meta_lstm_forward_kernel).__name__ != "InterpretedFunction":
            importlib.reload(module)  # imported before TRITON_INTERPRET was set: decorate the kernels again
        assert type(triton.language.standard.sigmoid).__name__ == "InterpretedFunction", \
            "triton was imported before TRITON_INTERPRET=1 was set: run this file in a fresh process"
        monkeypatch.setitem(kernels.BACKENDS, "cpu", TRITON_BACKEND)
        assert type(kernels.backend("cpu")._meta_lstm_forward_kernel).__name__ == "InterpretedFunction"
    assert kernels.backend(DEVICE).__name__ == TRITON_BACKEND


def relative_error(value, reference):
    return ((value - reference).abs().max() / reference.abs().max()).item()


def perturbed_meta_learner(n_params, hidden_size, seed=0):
    torch.manual_seed(seed)
    meta = MetaLearner(torch.randn(n_params), hidden_size=hidden_size, step_kernel="fused")
    with torch.no_grad():
        for param in meta.parameters():
            param.add_(0.3 * torch.randn_like(param))
    return meta.to(DEVICE)


def gradients_over_magnitudes(batch, n_params, generator):
    """From 1e-8 to 10: both branches of the preprocessing (|g| < e^-10 = 4.5e-5 and above)."""
    return (torch.randn(batch, n_params, generator=generator) * 10.0 ** torch.randint(-8, 2, (batch, n_params), generator=generator))


def step_outputs_and_gradients(step, meta, theta, grad, loss, state, output_grads):
    leaves = [t.detach().requires_grad_() for t in (theta, *state)]
    theta_next, state_next = step(meta.weights(), leaves[0], grad, loss, MetaLSTMState(*leaves[1:]), meta.p)
    outputs = (theta_next, *state_next)
    grads = torch.autograd.grad(outputs, [*leaves, *meta.weights()], output_grads)
    return [o.detach() for o in outputs], grads


def one_step_case(hidden_size, batch, n_params, grad=None, seed=1):
    generator = torch.Generator().manual_seed(seed)
    meta = perturbed_meta_learner(n_params, hidden_size, seed)
    theta = torch.randn(batch, n_params, generator=generator)
    grad = gradients_over_magnitudes(batch, n_params, generator) if grad is None else grad
    loss = torch.rand(batch, generator=generator)
    h, c = (torch.randn(hidden_size, batch, n_params, generator=generator).permute(1, 2, 0) for _ in range(2))
    state = MetaLSTMState(h, c, *(torch.randn(batch, n_params, generator=generator) for _ in range(2)))
    output_grads = [torch.randn(t.shape, generator=generator) for t in (theta, *state)]
    tensors = [t.to(DEVICE) for t in (theta, grad, loss)]
    return meta, tensors, MetaLSTMState(*(s.to(DEVICE) for s in state)), [g.to(DEVICE) for g in output_grads]


@pytest.mark.parametrize("hidden_size", [8, 20, 5])  # 5 and 20: padded to the 16 and 32 rows of tl.dot
@pytest.mark.parametrize("batch", [1, 3])
def test_one_step_forward_and_every_gradient_equal_the_plain_step(hidden_size, batch):
    meta, (theta, grad, loss), state, output_grads = one_step_case(hidden_size, batch, n_params=37)  # blocks of 64: a short one
    fused = step_outputs_and_gradients(fused_meta_lstm_step, meta, theta, grad, loss, state, output_grads)
    plain = step_outputs_and_gradients(meta_lstm_step, meta, theta, grad, loss, state, output_grads)
    for index, (value, reference) in enumerate(zip([*fused[0], *fused[1]], [*plain[0], *plain[1]])):
        assert reference.abs().max() > 0, index
        assert relative_error(value, reference) <= 1e-5, index


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the interpreter's numpy, at 3e38 as torch
def test_zero_tiny_and_huge_gradients_take_the_plain_steps_branches():
    threshold = torch.tensor(torch.e ** -10).item()
    grad = torch.tensor([[0.0, -0.0, 1e-30, 0.5 * threshold, -0.5 * threshold, threshold, -threshold, 1.01 * threshold,
                          1e-3, -1.0, 7.0, 1e20, -1e20, 3e38, -3e38, 2.0]])
    meta, (theta, grad, loss), state, output_grads = one_step_case(20, 1, 16, grad=grad, seed=2)
    output_grads[0].zero_()  # d theta_next * grad would overflow at 3e38 in both steps alike
    fused = step_outputs_and_gradients(fused_meta_lstm_step, meta, theta, grad, loss, state, output_grads)
    plain = step_outputs_and_gradients(meta_lstm_step, meta, theta, grad, loss, state, output_grads)
    for value, reference in zip([*fused[0][1:], *fused[1]], [*plain[0][1:], *plain[1]]):
        assert relative_error(value, reference) <= 1e-5
    finite = torch.isfinite(plain[0][0])
    assert torch.equal(torch.isfinite(fused[0][0]), finite)
    assert relative_error(fused[0][0][finite], plain[0][0][finite]) <= 1e-5


@pytest.mark.parametrize("hidden_size, batch, steps", [(8, 2, 12), (20, 3, 3)])
def test_unroll_meta_gradient_through_the_theta_recursion_equals_the_plain_step(hidden_size, batch, steps):
    meta = perturbed_meta_learner(29, hidden_size, seed=3)
    results = {}
    for kernel in ("fused", "torch"):
        meta.step_kernel = kernel
        generator = torch.Generator().manual_seed(4)
        theta = meta.initial_theta(batch)
        state = meta.initial_state(theta)
        for _ in range(steps):
            grad = gradients_over_magnitudes(batch, 29, generator).to(DEVICE)
            theta, state = meta(theta, grad, torch.rand(batch, generator=generator).to(DEVICE), state)
        meta.zero_grad()
        ((theta * torch.linspace(-1, 1, theta.numel(), device=DEVICE).view(theta.shape)).sum()
         + 0.1 * (state.h ** 2).sum() + 0.01 * state.f.sum()).backward()
        results[kernel] = (theta.detach(), {name: param.grad.clone() for name, param in meta.named_parameters()})
    assert relative_error(results["fused"][0], results["torch"][0]) <= 1e-5
    for name, expected in results["torch"][1].items():
        assert expected.abs().max() > 0, name
        assert relative_error(results["fused"][1][name], expected) <= 1e-4, name


@pytest.mark.parametrize("hidden_size, batch, steps", [(8, 1, 1), (20, 3, 3)])
def test_andrychowicz_step_and_its_gradients_equal_the_plain_step(hidden_size, batch, steps):
    torch.manual_seed(5)
    rule = AndrychowiczRule(hidden_size=hidden_size).to(DEVICE)
    results = {}
    for kernel in ("fused", "torch"):
        rule.step_kernel = kernel
        generator = torch.Generator().manual_seed(6)
        theta_0 = torch.randn(batch, 29, generator=generator).to(DEVICE).requires_grad_()
        state = AndrychowiczState(*(0.5 * torch.randn(hidden_size, batch, 29, generator=generator).to(DEVICE).permute(1, 2, 0)
                                    for _ in range(4)))
        theta = theta_0
        for _ in range(steps):
            theta, state = rule(theta, gradients_over_magnitudes(batch, 29, generator).to(DEVICE), None, state)
        rule.zero_grad()
        weights = torch.rand(batch, 29, generator=generator).to(DEVICE)
        ((theta * weights).sum() + 0.1 * (state.h2 ** 2).sum() + 0.2 * state.c1.sum() + 0.3 * state.h1.sum()
         + 0.4 * state.c2.sum()).backward()
        results[kernel] = (theta.detach(), {"theta_0": theta_0.grad, **{n: p.grad.clone() for n, p in rule.named_parameters()}})
    assert relative_error(results["fused"][0], results["torch"][0]) <= 1e-5
    for name, expected in results["torch"][1].items():
        assert expected.abs().max() > 0, name
        assert relative_error(results["fused"][1][name], expected) <= 1e-4, name
