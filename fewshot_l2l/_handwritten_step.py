"""TEMPORARY (removed in the next commit unless it wins): main's hand-written first-order backward, verbatim,
kept only so that benchmarks/meta_step.py can time it side by side with the checkpointed step.

``TANH_C`` selects ``tanh(c)``: main's ``fast_tanh`` (2 sigmoid(2x) - 1) or ``torch.tanh``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from .meta_learner import MetaLSTMState
from .preprocess import preprocess

TANH_C = "fast_tanh"


def fast_tanh(x: Tensor) -> Tensor:
    if TANH_C == "torch.tanh":
        return torch.tanh(x)
    return torch.sigmoid(2.0 * x).mul(2.0).sub(1.0)


def legacy_weights(meta) -> tuple[Tensor, ...]:
    """Main's positional 8-tuple (with the x2 gate scale of the cell-input gate)."""
    hidden = meta.hidden_size
    gate_scale = torch.ones(4 * hidden, dtype=meta.lstm.bias.dtype, device=meta.lstm.bias.device)
    gate_scale[2 * hidden : 3 * hidden] = 2.0
    w = meta.weights()
    return (w.weight_ih, w.weight_hh, w.bias, gate_scale, w.weight_forget, w.weight_input, w.bias_forget, w.bias_input)


def compiled_kernels() -> "StepKernels":
    return StepKernels(torch.compile(meta_step_outputs, dynamic=False), torch.compile(meta_step_backward, dynamic=False))


def meta_step(weights: tuple[Tensor, ...], theta: Tensor, grad: Tensor, loss: Tensor, state: MetaLSTMState, p: float):
    """The meta-learner's equations without autograd bookkeeping (:class:`FirstOrderMetaStep`'s kernels).

    ``weights`` as :meth:`MetaLearner._weights`. Returns ``(theta_t, h, c, f,
    i)`` followed by the intermediates the backward pass needs: the layer-1
    input ``[N, 4 + hidden]``, the activated gates ``[N, 4 * hidden]``, the
    scaled gate weights, ``tanh(c)``, ``2 g - 1``, ``sigmoid(f)`` and ``sigmoid(i)``.
    The gate scale (x2 on the cell-input gate, for ``tanh(g) = 2 sigmoid(2g) - 1``)
    is folded into the weights: scaling by 2 is exact, so the gates are the same numbers.
    """
    weight_ih, weight_hh, bias, gate_scale, weight_forget, weight_input, bias_forget, bias_input = weights
    batch, n_params = theta.shape
    hidden = weight_hh.shape[1]
    rows = batch * n_params
    layer1_in = torch.cat(
        (preprocess(grad, p), preprocess(loss, p)[:, None, :].expand(batch, n_params, 2), state.h), dim=-1
    ).view(rows, 4 + hidden)
    scaled_weight = torch.cat((weight_ih, weight_hh), dim=1) * gate_scale[:, None]
    # In-place where a fresh tensor is updated: each saved pass over [N, hidden] is ~5% of the step (eager).
    gates = torch.addmm(bias * gate_scale, layer1_in, scaled_weight.t()).sigmoid_()
    in_gate, forget_gate, cell_gate, out_gate = gates.view(rows, 4, hidden).unbind(1)
    cell_input = cell_gate.mul(2.0).sub_(1.0)
    c = (forget_gate * state.c.reshape(rows, hidden)).addcmul_(in_gate, cell_input)
    tanh_c = fast_tanh(c)
    h = out_gate * tanh_c
    gate_weights = torch.stack((weight_forget[:hidden], weight_input[:hidden]), dim=1)
    from_h = (h @ gate_weights).view(batch, n_params, 2)
    f = from_h[..., 0] + weight_forget[hidden] * theta + weight_forget[hidden + 1] * state.f + bias_forget
    i = from_h[..., 1] + weight_input[hidden] * theta + weight_input[hidden + 1] * state.i + bias_input
    sig_f, sig_i = torch.sigmoid(f), torch.sigmoid(i)
    theta_next = sig_f * theta - sig_i * grad
    h_out, c_out = h.view(batch, n_params, hidden), c.view(batch, n_params, hidden)
    return theta_next, h_out, c_out, f, i, layer1_in, gates, scaled_weight, tanh_c, cell_input, sig_f, sig_i


def meta_step_outputs(weights, theta, grad, loss, h, c, f, i, p):
    """``(theta_t, h, c, f, i)`` of :func:`meta_step` (the forward kernel)."""
    return meta_step(weights, theta, grad, loss, MetaLSTMState(h, c, f, i), p)[:5]


def meta_step_backward(weights, theta, grad, loss, h_prev, c_prev, f_prev, i_prev, p, d_theta_next, d_h, d_c, d_f, d_i):
    """Gradients of one step: recompute :func:`meta_step` from its inputs, then apply the chain rule by hand.

    The output gradients may be ``None`` (an output that did not reach the loss).
    Returns the gradients of ``theta``, ``h``, ``c``, ``f``, ``i`` (the previous
    state) and of the weights in :meth:`MetaLearner._weights` order (``None`` for the gate scale).
    """
    weight_ih, weight_hh, bias, gate_scale, weight_forget, weight_input, bias_forget, bias_input = weights
    state = MetaLSTMState(h_prev, c_prev, f_prev, i_prev)
    _, h, c, _, _, layer1_in, gates, scaled_weight, tanh_c, cell_input, sig_f, sig_i = meta_step(
        weights, theta, grad, loss, state, p
    )
    batch, n_params = theta.shape
    rows, hidden = layer1_in.shape[0], weight_hh.shape[1]
    # Layer 2: theta_t = sig(f) theta - sig(i) grad; f and i are linear in [h, theta, f_prev / i_prev].
    d_f = theta.new_zeros(batch, n_params) if d_f is None else d_f
    d_i = theta.new_zeros(batch, n_params) if d_i is None else d_i
    d_theta = weight_forget[hidden] * d_f + weight_input[hidden] * d_i
    if d_theta_next is not None:
        d_f = d_f + d_theta_next * theta * sig_f * (1.0 - sig_f)
        d_i = d_i - d_theta_next * grad * sig_i * (1.0 - sig_i)
        d_theta = weight_forget[hidden] * d_f + weight_input[hidden] * d_i + d_theta_next * sig_f
    d_fi = torch.stack((d_f, d_i), dim=-1).view(rows, 2)
    gate_weights = torch.stack((weight_forget[:hidden], weight_input[:hidden]), dim=1)
    d_gate_weights = h.reshape(rows, hidden).t() @ d_fi  # [hidden, 2]
    d_weight_forget = torch.cat((d_gate_weights[:, 0], (theta * d_f).sum().view(1), (f_prev * d_f).sum().view(1)))
    d_weight_input = torch.cat((d_gate_weights[:, 1], (theta * d_i).sum().view(1), (i_prev * d_i).sum().view(1)))
    # Layer 1: the LSTM cell, h = o tanh(c), c = f c_prev + i (2 g - 1), gates = sigmoid(W x + b).
    d_hidden = d_fi @ gate_weights.t()
    if d_h is not None:
        d_hidden = d_hidden + d_h.reshape(rows, hidden)
    in_gate, forget_gate, _, out_gate = gates.view(rows, 4, hidden).unbind(1)
    d_cell = (d_hidden * out_gate).mul_((tanh_c * tanh_c).neg_().add_(1.0))
    if d_c is not None:
        d_cell += d_c.reshape(rows, hidden)
    d_activated = torch.stack(
        (d_cell * cell_input, d_cell * c_prev.reshape(rows, hidden), d_cell * in_gate * 2.0, d_hidden * tanh_c), dim=1
    ).view(rows, 4 * hidden)
    d_gates = d_activated.mul_(gates)
    d_gates.addcmul_(d_gates, gates, value=-1.0)  # sigmoid' = a (1 - a)
    d_weight = (d_gates.t() @ layer1_in) * gate_scale[:, None]
    d_h_prev = (d_gates @ scaled_weight[:, 4:]).view(batch, n_params, hidden)
    d_c_prev = (d_cell * forget_gate).view(batch, n_params, hidden)
    return (
        d_theta, d_h_prev, d_c_prev, weight_forget[hidden + 1] * d_f, weight_input[hidden + 1] * d_i,
        d_weight[:, :4], d_weight[:, 4:], d_gates.sum(0) * gate_scale, None,
        d_weight_forget, d_weight_input, d_f.sum(), d_i.sum(),
    )


class StepKernels(NamedTuple):
    """The forward and backward functions :class:`FirstOrderMetaStep` runs (eager, or compiled by :meth:`MetaLearner.compile_step`)."""

    forward: Callable
    backward: Callable


EAGER_KERNELS = StepKernels(meta_step_outputs, meta_step_backward)


class FirstOrderMetaStep(torch.autograd.Function):
    """One meta-learner step with a hand-written backward, for constant ``grad`` and ``loss``.

    Saves only the step's inputs (the previous state, which the previous step
    produced anyway) and recomputes the gates in the backward pass: one extra
    ``[N, 4 + hidden] x [4 + hidden, 4 hidden]`` matmul and a few elementwise
    passes, against a dozen ``[N, hidden]``-sized tensors kept per step by
    autograd. Gradients flow to ``theta``, the recurrent state and every
    meta-learner weight; tested against :meth:`MetaLearner.differentiable_step`.
    """

    @staticmethod
    def forward(ctx, theta, grad, loss, h, c, f_prev, i_prev, p, kernels, *weights):
        ctx.set_materialize_grads(False)
        ctx.p, ctx.kernels = p, kernels
        ctx.save_for_backward(theta, grad, loss, h, c, f_prev, i_prev, *weights)
        return kernels.forward(weights, theta, grad, loss, h, c, f_prev, i_prev, p)

    @staticmethod
    def backward(ctx, d_theta_next, d_h, d_c, d_f, d_i):
        theta, grad, loss, h, c, f_prev, i_prev, *weights = ctx.saved_tensors
        d_theta, d_h_prev, d_c_prev, d_f_prev, d_i_prev, *d_weights = ctx.kernels.backward(
            tuple(weights), theta, grad, loss, h, c, f_prev, i_prev, ctx.p, d_theta_next, d_h, d_c, d_f, d_i
        )
        return (d_theta, None, None, d_h_prev, d_c_prev, d_f_prev, d_i_prev, None, None, *d_weights)


def handwritten_forward(meta, kernels: StepKernels, theta: Tensor, grad: Tensor, loss: Tensor, state) -> tuple[Tensor, MetaLSTMState]:
    """Main's ``MetaLearner.forward`` for constant ``grad``/``loss`` (first order and evaluation), with the
    episodes split into chunks by ``torch.split`` as the new forward does (main sliced them)."""
    weights = legacy_weights(meta)
    batch, n_params = theta.shape
    per_chunk = batch if theta.device.type != "cpu" else max(1, meta.cpu_chunk_rows // n_params)

    def step(theta, grad, loss, *state):
        if not torch.is_grad_enabled():
            return kernels.forward(weights, theta, grad, loss, *state, meta.p)
        return FirstOrderMetaStep.apply(theta, grad, loss, *state, meta.p, kernels, *weights)

    if per_chunk >= batch:
        outputs = step(theta, grad, loss, *state)
    else:
        pieces = zip(*(t.split(per_chunk) for t in (theta, grad, loss, *state)))
        outputs = [torch.cat(parts) for parts in zip(*(step(*piece) for piece in pieces))]
    return outputs[0], MetaLSTMState(*outputs[1:])
