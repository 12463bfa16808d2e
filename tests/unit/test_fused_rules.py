"""The fused steps behind the learned update rules (fewshot_l2l.optim.rules) on the CPU: Andrychowicz et al.'s LSTM
rule against its plain step (forward, every gradient, unrolls), the rules that stay on the plain step (GAC,
NTM-BFGS), and LearnedOptimizer's step_kernel setting.

Errors are relative to the largest entry of the reference tensor: max |fused - plain| / max |plain|."""

import os

import pytest
import torch

from fewshot_l2l import kernels
from fewshot_l2l.kernels import cpu
from fewshot_l2l.optim import AndrychowiczRule, LearnedOptimizer, MetaLSTMRule
from fewshot_l2l.optim.ntm import NTMBFGSRule
from fewshot_l2l.optim.per_type import LayerTypeRule
from fewshot_l2l.optim.rules import AndrychowiczState, fused_andrychowicz_step

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}


@pytest.fixture(scope="module", autouse=True)
def built_kernels():
    """Skipped without the kernels, except under CI=true, where the build must work (as test_fused_step.py)."""
    if cpu.library() is None:
        message = f"the fused C++ kernels could not be built: {cpu.unavailable_reason()}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + "; CI=true, so they must", pytrace=False)
        pytest.skip(message)


def relative_error(value, reference):
    return ((value - reference).abs().max() / reference.abs().max()).item()


def gradients_over_magnitudes(shape, dtype, generator):
    """From 1e-8 to 10: both branches of the preprocessing (|g| < e^-10 = 4.5e-5 and above)."""
    return torch.randn(shape, generator=generator, dtype=dtype) * 10.0 ** torch.randint(-8, 2, shape, generator=generator)


def andrychowicz_unroll(rule, batch, n_params, steps, seed=1):
    """``steps`` steps from random parameters and a random state; the final parameters, and the gradients of a
    loss reaching every output of the last step with respect to the rule's weights and the initial parameters."""
    dtype = next(rule.parameters()).dtype
    generator = torch.Generator().manual_seed(seed)
    theta_0 = torch.randn(batch, n_params, generator=generator, dtype=dtype).requires_grad_()
    hidden = rule.hidden_size
    theta, state = theta_0, AndrychowiczState(*(0.5 * torch.randn(hidden, batch, n_params, generator=generator, dtype=dtype)
                                                .permute(1, 2, 0) for _ in range(4)))
    for _ in range(steps):
        theta, state = rule(theta, gradients_over_magnitudes((batch, n_params), dtype, generator), None, state)
    weights = torch.rand(batch, n_params, generator=generator, dtype=dtype)  # all positive: no sum cancels out
    rule.zero_grad()
    ((theta * weights).sum() + 0.1 * (state.h2 ** 2).sum() + 0.2 * state.c1.sum() + 0.3 * state.h1.sum()
     + 0.4 * state.c2.sum()).backward()
    return theta.detach(), {"theta_0": theta_0.grad, **{name: p.grad.clone() for name, p in rule.named_parameters()}}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("hidden_size", [8, 20, 5])
@pytest.mark.parametrize("batch, steps", [(1, 1), (3, 6)])
def test_andrychowicz_fused_step_and_its_gradients_equal_the_plain_step(dtype, hidden_size, batch, steps):
    torch.manual_seed(0)
    rule = AndrychowiczRule(hidden_size=hidden_size).to(dtype)
    results = {}
    for kernel in ("fused", "torch"):
        rule.step_kernel = kernel
        results[kernel] = andrychowicz_unroll(rule, batch, 37, steps)  # 37: not a multiple of a tile's lanes
    assert relative_error(results["fused"][0], results["torch"][0]) <= TOLERANCE[dtype]
    for name, expected in results["torch"][1].items():
        assert expected.abs().max() > 0, name
        assert relative_error(results["fused"][1][name], expected) <= TOLERANCE[dtype] * 10, name


def test_andrychowicz_fused_operator_passes_gradcheck_and_opcheck():
    torch.manual_seed(2)
    rule = AndrychowiczRule(hidden_size=3).double()
    generator = torch.Generator().manual_seed(2)
    theta = torch.randn(2, 5, generator=generator, dtype=torch.float64)
    grad = gradients_over_magnitudes((2, 5), torch.float64, generator)
    states = [torch.randn(3, 2, 5, generator=generator, dtype=torch.float64) for _ in range(4)]
    weights = [w.detach() for w in (rule.layer1.weight_ih, rule.layer1.weight_hh, rule.layer1.bias, rule.layer2.weight_ih,
                                    rule.layer2.weight_hh, rule.layer2.bias, rule.output.weight, rule.output.bias)]
    differentiable = [t.clone().requires_grad_() for t in (theta, *states, *weights)]

    def step(theta, h1, c1, h2, c2, *weights):
        return kernels.andrychowicz_step_op(theta, grad, h1, c1, h2, c2, *weights, rule.p, rule.output_scale)

    assert torch.autograd.gradcheck(step, differentiable, eps=1e-6, atol=1e-7, rtol=1e-5)
    theta, *rest = differentiable
    torch.library.opcheck(kernels.andrychowicz_step_op,
                          (theta, grad, *rest, rule.p, rule.output_scale))


def test_gac_and_ntm_bfgs_stay_on_the_plain_step_and_refuse_fused():
    gac = AndrychowiczRule(hidden_size=6, gac_cells=2)
    ntm = NTMBFGSRule(hidden_size=6, gac_cells=2, memory_size=3)
    for rule, reason in ((gac, "global averaging cells"), (ntm, "more than the preprocessed gradient")):
        assert rule.step_kernel == "auto" and rule.plain_only() is not None
        with pytest.raises(ValueError, match=f"step_kernel='fused' is impossible: .*{reason}"):
            rule.step_kernel = "fused"
    with pytest.raises(ValueError, match="global averaging cells"):
        AndrychowiczRule(hidden_size=6, gac_cells=2, step_kernel="fused")
    theta = torch.randn(1, 8)
    calls = []
    original = kernels.andrychowicz_step_op
    try:
        kernels.andrychowicz_step_op = lambda *args: calls.append(args) or original(*args)
        gac(theta, torch.randn(1, 8), None, gac.initial_state(theta))
        ntm(theta, torch.randn(1, 8), None, ntm.initial_state(theta))
        plain = AndrychowiczRule(hidden_size=6)
        plain(theta, torch.randn(1, 8), None, plain.initial_state(theta))
    finally:
        kernels.andrychowicz_step_op = original
    assert len(calls) == 1  # only the plain coordinatewise rule ran the fused operator


def test_the_plain_step_runs_for_second_order_and_under_torch_func():
    rule = AndrychowiczRule(hidden_size=4)
    theta = torch.randn(2, 9)
    state = rule.initial_state(theta)
    grad = torch.randn(2, 9, requires_grad=True)
    theta_next, _ = rule(theta, grad, None, state)
    assert torch.autograd.grad(theta_next.sum(), grad)[0].abs().sum() > 0  # through grad: the plain step (the fused raises)
    torch.func.vmap(lambda t: rule(t, grad.detach(), None, state)[0])(torch.randn(3, 2, 9))
    rule.step_kernel = "fused"
    with pytest.raises(ValueError, match="second order"):
        rule(theta, grad, None, state)


def mlp(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(7, 33), torch.nn.Tanh(), torch.nn.Linear(33, 3))


@pytest.mark.parametrize("make_rule", [lambda: MetaLSTMRule(hidden_size=8), lambda: AndrychowiczRule(hidden_size=8)],
                         ids=["meta-lstm", "andrychowicz"])
def test_learned_optimizer_steps_equal_with_the_fused_and_the_plain_kernel(make_rule):
    generator = torch.Generator().manual_seed(3)
    x, y = torch.randn(16, 7, generator=generator), torch.randint(0, 3, (16,), generator=generator)
    results = {}
    for kernel in ("fused", "torch"):
        torch.manual_seed(4)
        rule = make_rule()
        model = mlp(5)
        optimizer = LearnedOptimizer(model.parameters(), rule, step_kernel=kernel)
        assert rule.step_kernel == kernel
        for _ in range(5):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step(loss=loss)
        results[kernel] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert relative_error(results["fused"], results["torch"]) <= 1e-5
    assert not torch.equal(results["torch"], torch.cat([p.detach().flatten() for p in mlp(5).parameters()]))


def test_step_kernel_of_a_rule_per_layer_type_reaches_its_rules():
    rule = LayerTypeRule({"conv": AndrychowiczRule(hidden_size=4), "fc": AndrychowiczRule(hidden_size=4)})
    LearnedOptimizer(mlp(0).parameters(), rule, step_kernel="torch")
    assert [r.step_kernel for r in rule.rules.values()] == ["torch", "torch"]
    rule.step_kernel = "fused"
    assert [r.step_kernel for r in rule.rules.values()] == ["fused", "fused"]
    with pytest.raises(ValueError, match="step_kernel must be one of"):
        LearnedOptimizer(mlp(0).parameters(), rule, step_kernel="gpu")


def test_fused_andrychowicz_step_handles_the_optimizers_row_major_state():
    rule = AndrychowiczRule(hidden_size=8)
    generator = torch.Generator().manual_seed(6)
    theta, grad = torch.randn(1, 21, generator=generator), torch.randn(1, 21, generator=generator)
    state = AndrychowiczState(*(torch.randn(1, 21, 8, generator=generator) for _ in range(4)))  # [B, P, H] contiguous
    with torch.no_grad():
        fused = fused_andrychowicz_step(rule, theta, grad, state)
        rule.step_kernel = "torch"
        plain = rule(theta, grad, None, state)
    for value, reference in zip((fused[0], *fused[1]), (plain[0], *plain[1])):
        assert value.shape == reference.shape
        assert relative_error(value, reference) <= 1e-5
