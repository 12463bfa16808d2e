"""The fused Meta-LSTM step on the CPU (fewshot_l2l.kernels: the C++ kernels behind torch.ops.fewshot_l2l.meta_lstm_step)
against the readable step it replaces, meta_learner.meta_lstm_step: forward and every gradient, whole unrolls, both
branches of the preprocessing, non-contiguous inputs, the step_kernel dispatch, the operator as torch.compile sees
it, and the plain step when the kernels cannot be built.

Errors are relative to the largest entry of the reference tensor: max |fused - plain| / max |plain|."""

import logging
import os

import pytest
import torch

from fewshot_l2l import kernels
from fewshot_l2l.kernels import cpu
from fewshot_l2l.meta_learner import MetaLearner, MetaLSTMState, fused_meta_lstm_step, meta_lstm_step
from fewshot_l2l.checkpoints import load_checkpoint
from fewshot_l2l.methods import build_method, new_learner
from fewshot_l2l.methods.meta_lstm import MetaLSTMConfig
from fewshot_l2l.training import meta_train

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}


@pytest.fixture(scope="module", autouse=True)
def built_kernels():
    """The kernels, built once (a few seconds on first use, then cached); skipped without them, except under
    CI=true, where the build is part of the set-up and must work."""
    if cpu.library() is None:
        message = f"the fused C++ kernels could not be built: {cpu.unavailable_reason()}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + "; CI=true, so they must", pytrace=False)
        pytest.skip(message)


def relative_error(value, reference):
    return ((value - reference).abs().max() / reference.abs().max()).item()


def perturbed_meta_learner(n_params, hidden_size, dtype, seed=0, step_kernel="auto"):
    torch.manual_seed(seed)
    meta = MetaLearner(torch.randn(n_params), hidden_size=hidden_size, step_kernel=step_kernel).to(dtype)
    with torch.no_grad():  # weights away from their tiny initial range, so that every term matters
        for param in meta.parameters():
            param.add_(0.3 * torch.randn_like(param))
    return meta


def gradients_over_magnitudes(batch, n_params, dtype, generator):
    """Gradients from 1e-8 to 10, so that both branches of the preprocessing (|g| < e^-10 = 4.5e-5 and above) occur."""
    return (torch.randn(batch, n_params, generator=generator, dtype=dtype)
            * 10.0 ** torch.randint(-8, 2, (batch, n_params), generator=generator))


def random_state(meta, batch, n_params, dtype, generator):
    hidden = meta.hidden_size
    h, c = (torch.randn(hidden, batch, n_params, generator=generator, dtype=dtype).permute(1, 2, 0) for _ in range(2))
    f, i = (torch.randn(batch, n_params, generator=generator, dtype=dtype) for _ in range(2))
    return MetaLSTMState(h, c, f, i)


def step_outputs_and_gradients(step, meta, theta, grad, loss, state, output_grads):
    """A step's outputs and the gradients of sum(outputs * output_grads) with respect to theta, the state and the weights."""
    leaves = [t.detach().requires_grad_() for t in (theta, *state)]
    theta, state = leaves[0], MetaLSTMState(*leaves[1:])
    theta_next, state_next = step(meta.weights(), theta, grad, loss, state, meta.p)
    outputs = (theta_next, *state_next)
    wrt = [*leaves, *meta.weights()]
    grads = torch.autograd.grad(outputs, wrt, output_grads)
    return [o.detach() for o in outputs], grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("hidden_size", [8, 20, 5])  # 8 and 20: the specialised kernels; 5: the generic one
@pytest.mark.parametrize("batch", [1, 3])
def test_one_step_forward_and_every_gradient_equal_the_plain_step(dtype, hidden_size, batch):
    n_params = 37  # not a multiple of the 16 (float32) or 8 (float64) lanes of a tile
    generator = torch.Generator().manual_seed(1)
    meta = perturbed_meta_learner(n_params, hidden_size, dtype)
    theta = torch.randn(batch, n_params, generator=generator, dtype=dtype)
    grad = gradients_over_magnitudes(batch, n_params, dtype, generator)
    loss = torch.rand(batch, generator=generator, dtype=dtype)
    state = random_state(meta, batch, n_params, dtype, generator)
    output_grads = [torch.randn(t.shape, generator=generator, dtype=dtype) for t in (theta, *state)]
    fused = step_outputs_and_gradients(fused_meta_lstm_step, meta, theta, grad, loss, state, output_grads)
    plain = step_outputs_and_gradients(meta_lstm_step, meta, theta, grad, loss, state, output_grads)
    names = ["theta_next", "h", "c", "f", "i", "d theta", "d h", "d c", "d f", "d i",
             *(f"d {name}" for name in meta.weights()._fields)]
    for name, value, reference in zip(names, [*fused[0], *fused[1]], [*plain[0], *plain[1]]):
        assert value.shape == reference.shape, name
        assert reference.abs().max() > 0, name
        assert relative_error(value, reference) <= TOLERANCE[dtype], name


def unrolled(meta, batch, steps, seed=2):
    """``steps`` steps from theta_0 and the zero state (the training path), and the gradients of every
    parameter of a loss that reaches every output of the last step."""
    generator = torch.Generator().manual_seed(seed)
    dtype = meta.theta_init.dtype
    theta = meta.initial_theta(batch)
    state = meta.initial_state(theta)
    for _ in range(steps):
        grad = gradients_over_magnitudes(batch, meta.n_params, dtype, generator)
        theta, state = meta(theta, grad, torch.rand(batch, generator=generator, dtype=dtype), state)
    weights = torch.linspace(-1, 1, theta.numel(), dtype=dtype).view(theta.shape)
    meta.zero_grad()
    ((theta * weights).sum() + 0.1 * (state.h ** 2).sum() + 0.01 * state.f.sum() + 0.02 * state.c.sum()
     + 0.03 * state.i.sum()).backward()
    return theta.detach(), {name: param.grad.clone() for name, param in meta.named_parameters()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("hidden_size", [8, 20])
@pytest.mark.parametrize("batch", [1, 3])
def test_twelve_step_unroll_and_its_meta_gradient_equal_the_plain_step(dtype, hidden_size, batch):
    # 301 coordinates: 19 tiles of 16 per episode (the last one short), in several blocks of the backward's reduction.
    meta = perturbed_meta_learner(301, hidden_size, dtype)
    results = {}
    for kernel in ("fused", "torch"):
        meta.step_kernel = kernel
        results[kernel] = unrolled(meta, batch, steps=12)
    (theta_fused, grads_fused), (theta_plain, grads_plain) = results["fused"], results["torch"]
    assert relative_error(theta_fused, theta_plain) <= TOLERANCE[dtype]
    for name, expected in grads_plain.items():
        assert expected.abs().max() > 0, name
        assert relative_error(grads_fused[name], expected) <= TOLERANCE[dtype] * 10, name  # 12 steps of rounding


def test_zero_tiny_and_huge_gradients_take_the_plain_steps_branches():
    dtype = torch.float32
    meta = perturbed_meta_learner(16, 20, dtype, seed=3)
    threshold = torch.tensor(torch.e ** -10, dtype=dtype).item()
    grad = torch.tensor([[0.0, -0.0, 1e-30, -1e-30, 0.5 * threshold, -0.5 * threshold, threshold, -threshold,
                          1.01 * threshold, 1e-3, -1.0, 7.0, 1e20, -1e20, 3e38, -3e38]], dtype=dtype)
    generator = torch.Generator().manual_seed(4)
    theta = torch.randn(1, 16, generator=generator, dtype=dtype)
    loss = torch.tensor([1e-12], dtype=dtype)  # the loss on the small branch too
    state = random_state(meta, 1, 16, dtype, generator)
    output_grads = [torch.randn(t.shape, generator=generator, dtype=dtype) for t in (theta, *state)]
    output_grads[0].zero_()  # d theta_next * grad would overflow at 3e38 for both steps alike; the state's gradients stay
    fused = step_outputs_and_gradients(fused_meta_lstm_step, meta, theta, grad, loss, state, output_grads)
    plain = step_outputs_and_gradients(meta_lstm_step, meta, theta, grad, loss, state, output_grads)
    for value, reference in zip([*fused[0][1:], *fused[1]], [*plain[0][1:], *plain[1]]):
        assert relative_error(value, reference) <= 1e-5
    assert torch.equal(torch.isfinite(fused[0][0]), torch.isfinite(plain[0][0]))
    finite = torch.isfinite(plain[0][0])
    assert relative_error(fused[0][0][finite], plain[0][0][finite]) <= 1e-5


def test_gradcheck_of_the_fused_operator_in_float64():
    dtype = torch.float64
    generator = torch.Generator().manual_seed(5)
    hidden, batch, n_params = 3, 2, 5
    meta = perturbed_meta_learner(n_params, hidden, dtype, seed=5)
    theta = torch.randn(batch, n_params, generator=generator, dtype=dtype)
    grad = gradients_over_magnitudes(batch, n_params, dtype, generator)
    loss = torch.rand(batch, generator=generator, dtype=dtype)
    h, c = (torch.randn(hidden, batch, n_params, generator=generator, dtype=dtype) for _ in range(2))
    f, i = (torch.randn(batch, n_params, generator=generator, dtype=dtype) for _ in range(2))
    differentiable = [t.detach().requires_grad_() for t in (theta, h, c, f, i, *meta.weights())]

    def step(theta, h, c, f, i, *weights):
        return kernels.meta_lstm_step_op(theta, grad, loss, h, c, f, i, *weights, meta.p)

    assert torch.autograd.gradcheck(step, differentiable, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_operator_registration_passes_torch_library_opcheck():
    generator = torch.Generator().manual_seed(6)
    hidden, batch, n_params = 4, 2, 19
    meta = perturbed_meta_learner(n_params, hidden, torch.float32, seed=6)
    theta = torch.randn(batch, n_params, generator=generator).requires_grad_()
    h, c = (torch.randn(hidden, batch, n_params, generator=generator).requires_grad_() for _ in range(2))
    f, i = (torch.randn(batch, n_params, generator=generator).requires_grad_() for _ in range(2))
    args = (theta, gradients_over_magnitudes(batch, n_params, torch.float32, generator), torch.rand(batch, generator=generator),
            h, c, f, i, *(w.detach().clone().requires_grad_() for w in meta.weights()), meta.p)
    torch.library.opcheck(kernels.meta_lstm_step_op, args)


def test_non_contiguous_inputs_are_handled_by_the_step_and_refused_by_the_operator():
    meta = perturbed_meta_learner(29, 8, torch.float32, seed=7)
    generator = torch.Generator().manual_seed(7)
    theta = meta.initial_theta(3)  # expanded: stride 0 over the episodes
    grad = torch.randn(29, 3, generator=generator).t()  # a transposed view
    loss = torch.rand(6, generator=generator)[::2]  # a strided view
    h = torch.randn(3, 29, 8, generator=generator)  # [B, P, hidden] storage, not the step's [hidden, B, P]
    state = MetaLSTMState(h, torch.randn(3, 29, 8, generator=generator), *torch.randn(2, 3, 29, generator=generator))
    results = []
    for kernel in ("fused", "torch"):
        meta.step_kernel = kernel
        meta.zero_grad()
        theta_next, state_next = meta(theta, grad, loss, state)
        (theta_next.sum() + state_next.h.sum()).backward()
        results.append((theta_next.detach(), state_next.c.detach(), meta.theta_init.grad.clone()))
    for fused, plain in zip(*results):
        assert relative_error(fused, plain) <= 1e-5
    h_columns = torch.randn(8, 29, 3, generator=generator).permute(0, 2, 1)  # [hidden, B, P] values, other strides
    args = [theta.contiguous(), grad.contiguous(), loss.contiguous(), h_columns, h_columns.contiguous(),
            state.f, state.i, *(w.detach() for w in meta.weights()), meta.p]
    with pytest.raises(ValueError, match="h must be contiguous"):
        kernels.meta_lstm_step_op(*args)
    args[3], args[1] = h_columns.contiguous(), torch.zeros(3, 28)
    with pytest.raises(ValueError, match=r"grad must have shape \(3, 29\)"):
        kernels.meta_lstm_step_op(*args)


def test_results_do_not_depend_on_the_thread_count_beyond_rounding_and_repeat_exactly():
    meta = perturbed_meta_learner(3000, 20, torch.float32, seed=8, step_kernel="fused")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        theta_one, grads_one = unrolled(meta, 2, steps=3)
        again = unrolled(meta, 2, steps=3)
        torch.set_num_threads(2)
        theta_two, grads_two = unrolled(meta, 2, steps=3)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(theta_one, theta_two)  # every coordinate's arithmetic is the same; only the sums differ
    for name, grad in grads_one.items():
        assert torch.equal(grad, again[1][name]), name  # same threads: the same reduction order
        assert relative_error(grads_two[name], grad) <= 1e-5, name


class Spy:
    """Counts the calls of the fused step of a meta-learner."""

    def __init__(self, meta):
        self.calls, self.step = 0, meta._fused_step
        meta._fused_step = self

    def __call__(self, *args):
        self.calls += 1
        return self.step(*args)


def test_auto_runs_the_fused_step_for_first_order_and_evaluation_and_the_plain_one_otherwise():
    meta = perturbed_meta_learner(11, 4, torch.float32, seed=9)
    spy = Spy(meta)
    theta = meta.initial_theta(2)
    state = meta.initial_state(theta)
    grad, loss = torch.randn(2, 11), torch.rand(2)
    meta(theta, grad, loss, state)  # first order (grad and loss are constants)
    with torch.no_grad():
        meta(theta, grad, loss, state)  # evaluation
    assert spy.calls == 2
    meta(theta, grad.requires_grad_(), loss, state)  # second order: gradients through the learner's gradient
    with torch.no_grad():
        meta(theta, grad, loss, state)  # no graph is built: nothing flows through grad, fused again
    assert spy.calls == 3
    meta.bfloat16()
    meta(theta.bfloat16(), grad.detach().bfloat16(), loss.bfloat16(), MetaLSTMState(*(s.bfloat16() for s in state)))
    assert spy.calls == 3
    meta.float().step_kernel = "torch"
    meta(theta.float(), grad.detach().float(), loss.float(), MetaLSTMState(*(s.float() for s in state)))
    assert spy.calls == 3


def test_auto_runs_the_plain_step_under_torch_func_transforms():
    meta = perturbed_meta_learner(9, 4, torch.float32, seed=10)
    spy = Spy(meta)
    theta = meta.initial_theta(2)
    state = meta.initial_state(theta)
    grad, loss = torch.randn(2, 9), torch.rand(2)
    params = {name: param.detach() for name, param in meta.named_parameters()}

    def meta_loss(params):
        theta_next, _ = torch.func.functional_call(meta, params, (params["theta_init"].expand(2, -1), grad, loss, state))
        return theta_next.sum()

    torch.func.grad(meta_loss)(params)
    torch.func.vmap(lambda t: meta(t, grad, loss, state)[0])(torch.randn(3, 2, 9))
    assert spy.calls == 0
    meta.step_kernel = "fused"
    with pytest.raises(ValueError, match="torch.func transform"):
        torch.func.grad(meta_loss)(params)


def test_fused_refuses_what_it_cannot_run_naming_the_reason():
    meta = perturbed_meta_learner(9, 4, torch.float32, seed=11, step_kernel="fused")
    theta = meta.initial_theta(1)
    with pytest.raises(ValueError, match="second order"):
        meta(theta, torch.randn(1, 9, requires_grad=True), torch.rand(1), meta.initial_state(theta))
    with pytest.raises(ValueError, match="step_kernel must be one of auto, fused, torch, got 'cuda'"):
        MetaLearner(torch.zeros(3), step_kernel="cuda")
    with pytest.raises(ValueError, match="step_kernel"):
        MetaLSTMConfig(step_kernel="fast")


def test_torch_compile_sees_one_operator_and_compile_step_gives_the_eager_results():
    meta = perturbed_meta_learner(23, 8, torch.float32, seed=12, step_kernel="fused")
    graphs = []

    def recording_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    theta = meta.initial_theta(2)
    state = meta.initial_state(theta)
    grad, loss = torch.randn(2, 23), torch.rand(2)
    compiled = torch.compile(fused_meta_lstm_step, backend=recording_backend, fullgraph=True)
    with torch.no_grad():
        expected = fused_meta_lstm_step(meta.weights(), theta, grad, loss, state, meta.p)
        result = compiled(meta.weights(), theta, grad, loss, state, meta.p)
    targets = [node.target for node in graphs[0].graph.nodes if node.op == "call_function"]
    assert targets.count(torch.ops.fewshot_l2l.meta_lstm_step.default) == 1
    for value, reference in zip((result[0], *result[1]), (expected[0], *expected[1])):
        assert torch.equal(value, reference)

    eager = unrolled(meta, 2, steps=3)
    meta.compile_step(backend="aot_eager")  # forward and backward traced through the fake implementations
    compiled_run = unrolled(meta, 2, steps=3)
    assert torch.equal(compiled_run[0], eager[0])
    for name, grad in eager[1].items():
        assert torch.allclose(compiled_run[1][name], grad, rtol=1e-6, atol=0), name


def test_without_a_compiler_the_plain_step_runs_and_says_so_once(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("FEWSHOT_L2L_KERNEL_DIR", str(tmp_path / "cache"))  # nothing cached: a build is needed
    monkeypatch.setattr(cpu, "_loader", cpu._Loader())
    meta = perturbed_meta_learner(13, 4, torch.float32, seed=13)
    theta = meta.initial_theta(1)
    state = meta.initial_state(theta)
    grad, loss = torch.randn(1, 13), torch.rand(1)
    with caplog.at_level(logging.WARNING, logger="fewshot_l2l"):
        theta_auto, _ = meta(theta, grad, loss, state)
        meta(theta, grad, loss, state)
    messages = [record.getMessage() for record in caplog.records if record.name == "fewshot_l2l"]
    assert len(messages) == 1 and "\n" not in messages[0]
    assert "no C++ compiler" in messages[0] and "plain torch step" in messages[0]
    assert torch.equal(theta_auto, meta_lstm_step(meta.weights(), theta, grad, loss, state, meta.p)[0])
    meta.step_kernel = "fused"
    with pytest.raises(ValueError, match="could not be built"):
        meta(theta, grad, loss, state)


def test_a_failing_build_is_reported_with_the_compilers_error(monkeypatch, tmp_path):
    compiler = tmp_path / "broken-c++"
    compiler.write_text("#!/bin/sh\necho 'error: this compiler is broken' >&2\nexit 1\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    monkeypatch.setenv("FEWSHOT_L2L_KERNEL_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cpu, "_loader", cpu._Loader())
    assert cpu.library() is None
    assert "this compiler is broken" in cpu.unavailable_reason()
    assert not list((tmp_path / "cache").glob("*"))  # no partial library left behind


def test_meta_training_with_the_fused_step_equals_the_plain_step_after_20_meta_updates(tmp_path, tiny_data):
    states = {}
    for kernel in ("fused", "torch"):
        config = MetaLSTMConfig(n_way=3, k_shot=1, n_query=2, meta_batch=2, episodes=40, hidden_channels=4,
                             val_every=40, val_episodes=2, device="cpu", step_kernel=kernel, out=str(tmp_path / kernel))
        assert config.inner_steps == 12
        meta_train(config, progress=False)
        method, _, checkpoint = load_checkpoint(tmp_path / kernel / "last.pt")
        assert checkpoint["progress"]["state"]["update"] == 20 and method.meta_learner.step_kernel == kernel
        states[kernel] = method.model.state_dict()
    initial = build_method(config, new_learner(config, tiny_data["train"].image_shape)).model.state_dict()
    for name, plain in states["torch"].items():
        assert not torch.equal(plain, initial[name]), name  # training moved every weight
        assert relative_error(states["fused"][name], plain) <= 1e-4, name
