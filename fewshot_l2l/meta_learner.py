"""The coordinatewise meta-learner LSTM of Ravi & Larochelle (ICLR 2017).

Every learner parameter (a "coordinate") is one row of a batch. Two layers:

1. An ordinary LSTM cell (:class:`CoordinateLSTMCell`), 4 -> hidden, over the preprocessed gradient and loss
   of each coordinate (:func:`fewshot_l2l.preprocess.preprocess`).
2. The meta-LSTM cell, whose **cell state is the learner's parameters**::

       f_t = W_F . [h_t, theta_{t-1}, f_{t-1}] + b_F
       i_t = W_I . [h_t, theta_{t-1}, i_{t-1}] + b_I
       theta_t = sigmoid(f_t) * theta_{t-1} - sigmoid(i_t) * grad_t

   ``W_F``/``W_I`` have ``hidden + 2`` entries shared by all coordinates; the
   pre-sigmoid gates ``f``/``i`` are what recur. ``grad_t`` is the raw
   gradient. The initial cell state ``theta_0`` is a meta-learned parameter: the
   learner's initialization.

All coordinates of all episodes of a meta-batch are processed by one batched
operation per gate and step; tensors carry a leading episode dimension
``[B, P]`` (``P`` = number of learner parameters).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn

from .preprocess import preprocess


class MetaLSTMState(NamedTuple):
    """Recurrent state of both layers, every tensor with leading shape ``[B, P]``."""

    h: Tensor  # layer-1 hidden state, [B, P, hidden]
    c: Tensor  # layer-1 cell state, [B, P, hidden]
    f: Tensor  # layer-2 pre-sigmoid forget gate, [B, P]
    i: Tensor  # layer-2 pre-sigmoid input gate, [B, P]


def fast_tanh(x: Tensor) -> Tensor:
    """``tanh(x) = 2 sigmoid(2x) - 1``, exact in real arithmetic.

    On the CPU build we ship, ``torch.tanh`` ran about 4x slower than
    ``torch.sigmoid`` (measured 0.39 vs 1.7 billion elements/s on 2 threads),
    and layer 1 applies it to ``P x hidden`` elements twice per step.
    """
    return torch.sigmoid(2.0 * x).mul(2.0).sub(1.0)


class CoordinateLSTMCell(nn.Module):
    """Layer 1: a standard LSTM cell (same equations and parameters as ``nn.LSTMCell``), 4 -> hidden.

    Written out so that all four gates come from one ``addmm`` and one sigmoid
    over ``[N, 4 * hidden]`` (the cell-input gate uses ``tanh(g) = 2 sigmoid(2g) - 1``),
    which measured about 1.5x faster than ``nn.LSTMCell`` on CPU for the
    ~10^5-row batches a meta-batch of learners produces.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        # Gate order (input, forget, cell, output) as in nn.LSTMCell; the authors
        # initialize every weight in U(-0.01, 0.01).
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size).uniform_(-0.01, 0.01))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size).uniform_(-0.01, 0.01))
        self.bias = nn.Parameter(torch.empty(4 * hidden_size).uniform_(-0.01, 0.01))
        gate_scale = torch.ones(4 * hidden_size)
        gate_scale[2 * hidden_size : 3 * hidden_size] = 2.0
        self.register_buffer("gate_scale", gate_scale, persistent=False)

    def forward(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` ``[N, input]``, ``h``/``c`` ``[N, hidden]`` -> new ``(h, c)``."""
        weight = torch.cat((self.weight_ih, self.weight_hh), dim=1)
        gates = torch.addmm(self.bias, torch.cat((x, h), dim=1), weight.t())
        activated = torch.sigmoid(gates * self.gate_scale)
        i, f, g, o = activated.chunk(4, dim=1)
        c_next = f * c + i * (2.0 * g - 1.0)
        h_next = o * fast_tanh(c_next)
        return h_next, c_next


class MetaLSTMCell(nn.Module):
    """Layer 2: gates from ``[h, theta, previous gate]`` and the theta update.

    Initialization follows the authors' released code: ``b_F ~ U(4, 6)`` so the
    learner starts by remembering its parameters, ``b_I ~ U(-5, -4)`` so it
    starts with a small learning rate, gate weights ``U(-0.01, 0.01)``.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        if hidden_size < 1:
            raise ValueError(f"MetaLSTMCell: hidden_size must be >= 1, got {hidden_size}")
        self.hidden_size = hidden_size
        self.weight_forget = nn.Parameter(torch.empty(hidden_size + 2).uniform_(-0.01, 0.01))
        self.weight_input = nn.Parameter(torch.empty(hidden_size + 2).uniform_(-0.01, 0.01))
        self.bias_forget = nn.Parameter(torch.empty(()).uniform_(4.0, 6.0))
        self.bias_input = nn.Parameter(torch.empty(()).uniform_(-5.0, -4.0))

    def gates(self, h: Tensor, theta: Tensor, f_prev: Tensor, i_prev: Tensor) -> tuple[Tensor, Tensor]:
        """Pre-sigmoid forget and input gates, each shaped like ``theta``."""
        hidden = self.hidden_size
        # One matmul gives the h-part of both gates; the two remaining entries of
        # each weight vector multiply theta and the previous gate elementwise,
        # which avoids materializing the [*, hidden + 2] concatenation.
        weights = torch.stack((self.weight_forget[:hidden], self.weight_input[:hidden]), dim=1)
        from_h = h @ weights
        f = from_h[..., 0] + self.weight_forget[hidden] * theta + self.weight_forget[hidden + 1] * f_prev + self.bias_forget
        i = from_h[..., 1] + self.weight_input[hidden] * theta + self.weight_input[hidden + 1] * i_prev + self.bias_input
        return f, i

    def forward(self, h: Tensor, theta: Tensor, grad: Tensor, f_prev: Tensor, i_prev: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(theta_t, f_t, i_t)``."""
        f, i = self.gates(h, theta, f_prev, i_prev)
        theta_next = torch.sigmoid(f) * theta - torch.sigmoid(i) * grad
        return theta_next, f, i


class MetaLearner(nn.Module):
    """Two-layer coordinatewise meta-learner whose cell state is the learner's parameters.

    Args:
        init_params: flat initial learner parameters ``[P]``; they become the
            meta-learned initial cell state ``theta_0``.
        hidden_size: hidden units of layer 1 (20 in the paper).
        p: preprocessing constant of Andrychowicz et al. (10).
    """

    def __init__(self, init_params: Tensor, hidden_size: int = 20, p: float = 10.0) -> None:
        super().__init__()
        if init_params.dim() != 1:
            raise ValueError(f"MetaLearner: init_params must be a flat vector [P], got shape {tuple(init_params.shape)}")
        self.hidden_size = hidden_size
        self.p = p
        self.lstm = CoordinateLSTMCell(4, hidden_size)
        self.cell = MetaLSTMCell(hidden_size)
        self.theta_init = nn.Parameter(init_params.detach().clone())
        self._kernels = EAGER_KERNELS
        # CPU only: coordinates per chunk of episodes in the first-order step (see forward).
        self.cpu_chunk_rows = 1 << 15

    @property
    def n_params(self) -> int:
        """Number of learner coordinates ``P``."""
        return self.theta_init.numel()

    def initial_theta(self, n_episodes: int) -> Tensor:
        """``theta_0`` expanded to ``[n_episodes, P]`` (a view: gradients reach ``theta_init``)."""
        return self.theta_init.expand(n_episodes, -1)

    def initial_state(self, theta: Tensor) -> MetaLSTMState:
        """Zero recurrent state for parameters ``theta`` of shape ``[B, P]``."""
        zeros_hidden = theta.new_zeros(*theta.shape, self.hidden_size)
        zeros = theta.new_zeros(theta.shape)
        return MetaLSTMState(zeros_hidden, zeros_hidden, zeros, zeros)

    def compile_step(self, **compile_kwargs) -> None:
        """Run the step's forward and backward kernels through ``torch.compile`` (inductor) from now on.

        Inductor fuses the LSTM's elementwise gate arithmetic, a dozen passes
        over ``[B, P, hidden]`` tensors per step in eager mode, into a few loops.
        Compilation costs tens of seconds on a CPU the first time each shape is
        seen; off unless asked for (``--compile``; measured in README "Speed").
        """
        self._kernels = StepKernels(
            torch.compile(meta_step_outputs, dynamic=False, **compile_kwargs),
            torch.compile(meta_step_backward, dynamic=False, **compile_kwargs),
        )

    def forward(self, theta: Tensor, grad: Tensor, loss: Tensor, state: MetaLSTMState) -> tuple[Tensor, MetaLSTMState]:
        """One update of every coordinate of every episode.

        Args:
            theta: learner parameters ``[B, P]`` (the cell state ``theta_{t-1}``).
            grad: raw loss gradient at ``theta``, ``[B, P]``.
            loss: learner loss of each episode at ``theta``, ``[B]``.
            state: recurrent state from :meth:`initial_state` or the last call.

        Returns:
            ``(theta_t, new_state)``.

        Two implementations of the same equations. When ``grad`` and ``loss``
        are constants (first order, the default, and evaluation):
        :class:`FirstOrderMetaStep`, whose backward recomputes the gates from the
        step's inputs instead of storing a dozen ``[B, P, hidden]`` tensors per
        step (a meta-batch of 16 miniImageNet learners would otherwise need tens
        of GB). Otherwise (second order): plain autograd, :meth:`differentiable_step`.
        """
        if grad.shape != theta.shape or theta.dim() != 2:
            raise ValueError(f"MetaLearner: theta and grad must both be [B, P]; got {tuple(theta.shape)} and {tuple(grad.shape)}")
        if loss.shape != theta.shape[:1]:
            raise ValueError(f"MetaLearner: loss must be [B]={tuple(theta.shape[:1])}, got {tuple(loss.shape)}")
        if torch.is_grad_enabled() and (grad.requires_grad or loss.requires_grad):
            return self.differentiable_step(theta, grad, loss, state)
        batch, n_params = theta.shape
        per_chunk = batch if theta.device.type != "cpu" else max(1, self.cpu_chunk_rows // n_params)
        if per_chunk >= batch:
            return self._wrap(self._first_order_step(theta, grad, loss, state))
        # On a CPU, episodes in chunks whose gate tensors fit in the last-level cache: one
        # Omniglot learner's [P, 4 hidden] gates are 9 MB, a meta-batch of 4 is 36 MB. Measured
        # for the meta-learner alone (Omniglot, 1 thread, CPU-s per episode): evaluation 0.08
        # instead of 0.10 at meta-batches 4 and 16; meta-training within noise (0.31-0.39).
        chunks = [
            self._first_order_step(theta[b : b + per_chunk], grad[b : b + per_chunk], loss[b : b + per_chunk],
                                   MetaLSTMState(*(t[b : b + per_chunk] for t in state)))
            for b in range(0, batch, per_chunk)
        ]
        return self._wrap([torch.cat(parts) for parts in zip(*chunks)])

    @staticmethod
    def _wrap(outputs) -> tuple[Tensor, MetaLSTMState]:
        theta_next, h, c, f, i = outputs
        return theta_next, MetaLSTMState(h, c, f, i)

    def _first_order_step(self, theta: Tensor, grad: Tensor, loss: Tensor, state: MetaLSTMState) -> tuple[Tensor, ...]:
        """``(theta_t, h, c, f, i)`` for constant ``grad``/``loss``: the kernels directly under
        ``no_grad``, else through :class:`FirstOrderMetaStep`."""
        if not torch.is_grad_enabled():
            return self._kernels.forward(self._weights(), theta, grad, loss, *state, self.p)
        return FirstOrderMetaStep.apply(theta, grad, loss, *state, self.p, self._kernels, *self._weights())

    def _weights(self) -> tuple[Tensor, ...]:
        return (
            self.lstm.weight_ih, self.lstm.weight_hh, self.lstm.bias, self.lstm.gate_scale,
            self.cell.weight_forget, self.cell.weight_input, self.cell.bias_forget, self.cell.bias_input,
        )

    def differentiable_step(self, theta: Tensor, grad: Tensor, loss: Tensor, state: MetaLSTMState) -> tuple[Tensor, MetaLSTMState]:
        """:meth:`forward` written with ordinary autograd-tracked operations (second order)."""
        features = torch.cat(
            (preprocess(grad, self.p), preprocess(loss, self.p)[:, None, :].expand(*theta.shape, 2)), dim=-1
        )
        batch = theta.numel()
        h, c = self.lstm(features.reshape(batch, 4), state.h.reshape(batch, -1), state.c.reshape(batch, -1))
        h = h.view(*theta.shape, -1)
        c = c.view(*theta.shape, -1)
        theta_next, f, i = self.cell(h, theta, grad, state.f, state.i)
        return theta_next, MetaLSTMState(h, c, f, i)


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
