"""The meta-learner's equations against a naive per-coordinate reference written with Python floats."""

import math

import pytest
import torch
import torch.nn.functional as F

from fewshot_l2l.adaptation import InnerLoop, adapt, run_episodes, support_losses
from fewshot_l2l.data.episodes import EpisodeSampler
from fewshot_l2l.learner import ConvLearner, LearnerConfig
from fewshot_l2l.meta_learner import MetaLearner, meta_lstm_step


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def prep(x: float, p: float = 10.0) -> list[float]:
    if abs(x) >= math.exp(-p):
        return [math.log(abs(x)) / p, math.copysign(1.0, x)]
    return [-1.0, math.exp(p) * x]


def naive_step(meta: MetaLearner, theta, grad, loss, state):
    """One meta-learner step, one coordinate at a time, straight from the paper's equations."""
    H = meta.hidden_size
    w_ih = meta.lstm.weight_ih.tolist()
    w_hh = meta.lstm.weight_hh.tolist()
    bias = meta.lstm.bias.tolist()
    wf, wi = meta.cell.weight_forget.tolist(), meta.cell.weight_input.tolist()
    bf, bi = meta.cell.bias_forget.item(), meta.cell.bias_input.item()
    new_theta, new_state = [], []
    for j, (t, g) in enumerate(zip(theta, grad)):
        h, c, f_prev, i_prev = state[j]
        x = prep(g) + prep(loss)
        gates = [sum(w_ih[k][m] * x[m] for m in range(4)) + sum(w_hh[k][m] * h[m] for m in range(H)) + bias[k]
                 for k in range(4 * H)]
        i_g = [sigmoid(v) for v in gates[0:H]]
        f_g = [sigmoid(v) for v in gates[H:2 * H]]
        c_in = [math.tanh(v) for v in gates[2 * H:3 * H]]
        o_g = [sigmoid(v) for v in gates[3 * H:]]
        c_new = [f_g[m] * c[m] + i_g[m] * c_in[m] for m in range(H)]
        h_new = [o_g[m] * math.tanh(c_new[m]) for m in range(H)]
        f_t = sum(wf[m] * h_new[m] for m in range(H)) + wf[H] * t + wf[H + 1] * f_prev + bf
        i_t = sum(wi[m] * h_new[m] for m in range(H)) + wi[H] * t + wi[H + 1] * i_prev + bi
        new_theta.append(sigmoid(f_t) * t - sigmoid(i_t) * g)
        new_state.append((h_new, c_new, f_t, i_t))
    return new_theta, new_state


def tiny_problem(n_way=2, k_shot=2):
    learner = ConvLearner(LearnerConfig(in_channels=1, image_size=16, n_way=n_way, hidden_channels=1))
    torch.manual_seed(1)
    meta = MetaLearner(learner.init_params(), hidden_size=3).double()
    with torch.no_grad():  # large random meta-weights so that every term of the equations matters
        for param in (meta.lstm.weight_ih, meta.lstm.weight_hh, meta.lstm.bias, meta.cell.weight_forget, meta.cell.weight_input):
            param.uniform_(-0.5, 0.5)
        meta.cell.bias_forget.fill_(1.5)
        meta.cell.bias_input.fill_(-1.0)
    x = torch.rand(1, n_way * k_shot, 1, 16, 16, dtype=torch.float64)
    y = torch.arange(n_way).repeat_interleave(k_shot)[None]
    return learner, meta, x, y


def test_adapt_matches_naive_per_coordinate_reference():
    learner, meta, x, y = tiny_problem()
    steps = 3
    theta_fast = adapt(meta, learner, x, y, steps)[0]

    theta = meta.theta_init.tolist()
    H = meta.hidden_size
    state = [([0.0] * H, [0.0] * H, 0.0, 0.0) for _ in theta]
    for _ in range(steps):
        point = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
        loss = F.cross_entropy(learner.logits(point, x[0]), y[0])
        (grad,) = torch.autograd.grad(loss, point)
        theta, state = naive_step(meta, theta, grad.tolist(), loss.item(), state)
    assert learner.n_params == len(theta) > 40
    assert torch.allclose(theta_fast, torch.tensor(theta, dtype=torch.float64), atol=1e-6, rtol=0)
    assert not torch.allclose(theta_fast, meta.theta_init, atol=1e-3)  # the update did something


def test_unit_forget_gate_and_constant_input_gate_is_exactly_sgd():
    learner, meta, x, y = tiny_problem()
    lr = 0.05
    with torch.no_grad():
        meta.cell.weight_forget.zero_()
        meta.cell.weight_input.zero_()
        meta.cell.bias_forget.fill_(1e3)  # sigmoid(f) == 1 exactly
        meta.cell.bias_input.fill_(math.log(lr / (1 - lr)))  # sigmoid(i) == lr
    theta_meta = adapt(meta, learner, x, y, 4)[0]

    theta = meta.theta_init.detach().clone()
    for _ in range(4):
        point = theta.clone().requires_grad_()
        (grad,) = torch.autograd.grad(F.cross_entropy(learner.logits(point, x[0]), y[0]), point)
        theta = theta - lr * grad
    assert torch.allclose(theta_meta, theta, atol=1e-12, rtol=0)


def test_episodes_in_a_meta_batch_are_independent():
    learner, meta, x, y = tiny_problem()
    x2 = torch.cat((x, torch.rand_like(x)))
    y2 = torch.cat((y, y))
    batched = adapt(meta, learner, x2, y2, 3)
    alone = torch.cat([adapt(meta, learner, x2[b : b + 1], y2[b : b + 1], 3) for b in range(2)])
    assert torch.allclose(batched, alone, atol=1e-12)


def meta_loss(meta, learner, x, y, second_order):
    theta = adapt(meta, learner, x, y, InnerLoop(inner_steps=2, second_order=second_order))
    return support_losses(learner, theta, x, y).sum()


@pytest.mark.parametrize("second_order", [False, True])
def test_meta_gradient_against_finite_differences(second_order):
    """second_order=True must give the exact meta-gradient; the default drops only the terms through loss and grad."""
    learner, meta, x, y = tiny_problem()
    meta_loss(meta, learner, x, y, second_order).backward()
    for param in (meta.cell.bias_input, meta.lstm.bias):
        analytic = param.grad.flatten()[0].item()
        eps = 1e-6
        with torch.no_grad():
            param.view(-1)[0] += eps
            up = meta_loss(meta, learner, x, y, True).item()
            param.view(-1)[0] -= 2 * eps
            down = meta_loss(meta, learner, x, y, True).item()
            param.view(-1)[0] += eps
        numeric = (up - down) / (2 * eps)
        if second_order:
            assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8)
        else:
            # First-order meta-gradient: same sign and scale, not equal.
            assert analytic != pytest.approx(numeric, rel=1e-5)
            assert analytic == pytest.approx(numeric, rel=0.9)


def detached_meta_loss(meta, learner, x, y, steps=2):
    """The first-order meta-loss written out: the learner's gradient and loss are taken at the tracked theta
    and detached by hand at every step; the step is plain autograd of meta_lstm_step."""
    theta = meta.initial_theta(1)
    state = meta.initial_state(theta)
    for _ in range(steps):
        losses = support_losses(learner, theta, x, y)
        (grad,) = torch.autograd.grad(losses.sum(), theta, create_graph=True)
        theta, state = meta_lstm_step(meta.weights(), theta, grad.detach(), losses.detach(), state, meta.p)
    return support_losses(learner, theta, x, y).sum()


def test_first_order_keeps_loss_and_gradient_out_of_the_graph():
    learner, meta, x, y = tiny_problem()
    gradients = {}
    for name, loss_fn in (("first", lambda: meta_loss(meta, learner, x, y, second_order=False)),
                          ("detached", lambda: detached_meta_loss(meta, learner, x, y)),
                          ("second", lambda: meta_loss(meta, learner, x, y, second_order=True))):
        meta.zero_grad()
        loss_fn().backward()
        gradients[name] = {key: param.grad.clone() for key, param in meta.named_parameters()}
    for key, first in gradients["first"].items():
        assert first.abs().max() > 0, key
        assert torch.allclose(first, gradients["detached"][key], atol=1e-12, rtol=1e-10), key
    # Through theta_0 the learner's gradient depends on theta: second order differs.
    first, second = gradients["first"]["theta_init"], gradients["second"]["theta_init"]
    assert (first - second).norm() > 1e-3 * second.norm()


def test_same_seed_draws_the_initial_weights_in_the_documented_order():
    hidden = 5
    torch.manual_seed(7)
    meta = MetaLearner(torch.zeros(3), hidden_size=hidden)
    torch.manual_seed(7)
    expected = [
        torch.empty(4 * hidden, 4).uniform_(-0.01, 0.01),  # layer 1: weight_ih, weight_hh, bias
        torch.empty(4 * hidden, hidden).uniform_(-0.01, 0.01),
        torch.empty(4 * hidden).uniform_(-0.01, 0.01),
        torch.empty(hidden + 2).uniform_(-0.01, 0.01),  # layer 2: W_F, W_I, b_F, b_I
        torch.empty(hidden + 2).uniform_(-0.01, 0.01),
        torch.empty(()).uniform_(4.0, 6.0),
        torch.empty(()).uniform_(-5.0, -4.0),
    ]
    names = ["theta_init", "lstm.weight_ih", "lstm.weight_hh", "lstm.bias", "cell.weight_forget", "cell.weight_input",
             "cell.bias_forget", "cell.bias_input"]
    assert [name for name, _ in meta.named_parameters()] == names  # checkpoint keys and Adam's parameter order
    for (name, param), value in zip(list(meta.named_parameters())[1:], expected):
        assert torch.equal(param, value), name
    assert list(meta.weights()._fields) == [name.split(".")[1] for name in names[1:]]
    assert all(weight is param for weight, (_, param) in zip(meta.weights(), list(meta.named_parameters())[1:]))


def test_initialization_ranges():
    meta = MetaLearner(torch.zeros(10), hidden_size=20)
    assert 4 <= meta.cell.bias_forget.item() <= 6
    assert -5 <= meta.cell.bias_input.item() <= -4
    assert meta.cell.weight_forget.shape == meta.cell.weight_input.shape == (22,)
    for param in (meta.lstm.weight_ih, meta.lstm.weight_hh, meta.lstm.bias, meta.cell.weight_forget):
        assert param.abs().max() <= 0.01


def test_bad_shapes_are_rejected():
    meta = MetaLearner(torch.zeros(5), hidden_size=4)
    theta = meta.initial_theta(2)
    state = meta.initial_state(theta)
    with pytest.raises(ValueError, match="theta and grad"):
        meta(theta, torch.zeros(2, 4), torch.zeros(2), state)
    with pytest.raises(ValueError, match="loss must be"):
        meta(theta, torch.zeros(2, 5), torch.zeros(3), state)
    with pytest.raises(ValueError, match="flat vector"):
        MetaLearner(torch.zeros(2, 3))


def test_inner_batch_size_walks_through_the_support_set(tiny_splits):
    learner = ConvLearner(LearnerConfig(1, 16, 3, hidden_channels=2))
    meta = MetaLearner(learner.init_params(), hidden_size=4)
    episode = EpisodeSampler(tiny_splits["train"], 3, 2, 1, seed=0).sample(2)
    full = run_episodes(meta, learner, episode, 2)
    mini = run_episodes(meta, learner, episode, InnerLoop(inner_steps=2, inner_batch_size=2),
                        generator=torch.Generator().manual_seed(0))
    assert full.accuracy.shape == mini.accuracy.shape == (2,)
    assert full.loss.item() != pytest.approx(mini.loss.item(), rel=1e-6)
    with pytest.raises(ValueError, match="inner_steps"):
        adapt(meta, learner, episode.support_x, episode.support_y, 0)
