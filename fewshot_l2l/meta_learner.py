"""The coordinatewise meta-learner LSTM of Ravi & Larochelle (ICLR 2017).

Every learner parameter (a "coordinate") is one row of a batch. Two layers,
stated once, in :func:`meta_lstm_step`:

1. A standard LSTM cell (:func:`lstm_cell`), 4 -> hidden, over the preprocessed
   gradient and loss of each coordinate (:func:`fewshot_l2l.preprocess.preprocess`).
2. The meta-LSTM cell, whose **cell state is the learner's parameters**::

       f_t = W_F . [h_t, theta_{t-1}, f_{t-1}] + b_F
       i_t = W_I . [h_t, theta_{t-1}, i_{t-1}] + b_I
       theta_t = sigmoid(f_t) * theta_{t-1} - sigmoid(i_t) * grad_t

   ``W_F``/``W_I`` have ``hidden + 2`` entries shared by all coordinates; the
   pre-sigmoid gates ``f``/``i`` are what recur. ``grad_t`` is the raw gradient.

:class:`MetaLSTM` holds the weights (:class:`MetaLSTMWeights`, by name) and
their initialization; its forward is one step, the update rule.
:class:`MetaLearner` is that rule plus the meta-learned initial cell state
``theta_0``, the learner's initialization. All coordinates of all episodes of a
meta-batch are processed by one batched operation per gate and step; tensors
carry a leading episode dimension ``[B, P]`` (``P`` = number of learner parameters).
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from . import kernels
from .preprocess import preprocess


class MetaLSTMState(NamedTuple):
    """Recurrent state of both layers, every tensor with leading shape ``[B, P]``."""

    h: Tensor  # layer-1 hidden state, [B, P, hidden] (a view of [hidden, B, P] storage, see lstm_cell)
    c: Tensor  # layer-1 cell state, [B, P, hidden] (likewise)
    f: Tensor  # layer-2 pre-sigmoid forget gate, [B, P]
    i: Tensor  # layer-2 pre-sigmoid input gate, [B, P]


class MetaLSTMWeights(NamedTuple):
    """The weights of the two layers, shared by all coordinates (:meth:`MetaLSTM.weights`)."""

    weight_ih: Tensor  # layer 1, [4 hidden, 4]; gates in nn.LSTMCell's order (input, forget, cell, output)
    weight_hh: Tensor  # layer 1, [4 hidden, hidden]
    bias: Tensor  # layer 1, [4 hidden]
    weight_forget: Tensor  # W_F over [h, theta, f_prev], [hidden + 2]
    weight_input: Tensor  # W_I over [h, theta, i_prev], [hidden + 2]
    bias_forget: Tensor  # b_F, []
    bias_input: Tensor  # b_I, []


def lstm_cell(x: Tensor, h: Tensor, c: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """A standard LSTM cell (``nn.LSTMCell``'s equations, one bias) with one column per coordinate.

    ``x`` ``[in, N]``, ``h``/``c`` ``[hidden, N]`` -> new ``(h, c)``. The gates
    are ``W [x; h] + b``, ``[4 hidden, N]``, in ``nn.LSTMCell``'s order (input,
    forget, cell, output). Columns rather than rows per coordinate make each
    gate a contiguous block: elementwise operations on the column blocks of an
    ``[N, 4 hidden]`` product ran about 2x slower (docs/results/meta_step.md).
    """
    gates = torch.addmm(bias[:, None], torch.cat((weight_ih, weight_hh), dim=1), torch.cat((x, h)))
    in_gate, forget_gate, cell_gate, out_gate = gates.chunk(4)
    c = torch.sigmoid(forget_gate) * c + torch.sigmoid(in_gate) * torch.tanh(cell_gate)
    h = torch.sigmoid(out_gate) * torch.tanh(c)
    return h, c


def _columns(state: Tensor) -> Tensor:
    """``[B, P, hidden]`` -> ``[hidden, B P]``, one column per coordinate (a view for the state :func:`meta_lstm_step` returns)."""
    return state.permute(2, 0, 1).reshape(state.shape[2], -1)


def meta_lstm_step(
    weights: MetaLSTMWeights, theta: Tensor, grad: Tensor, loss: Tensor, state: MetaLSTMState, p: float
) -> tuple[Tensor, MetaLSTMState]:
    """One update of every coordinate of every episode: the meta-learner's equations (module docstring).

    ``theta``/``grad`` ``[B, P]``, ``loss`` ``[B]``, ``p`` the preprocessing
    constant; returns ``(theta_t, state_t)``. Plain tensor operations: autograd,
    ``torch.func`` and ``torch.compile`` all go through this one function.
    """
    batch, n_params = theta.shape
    hidden = weights.weight_hh.shape[1]
    # Layer 1 on one column per coordinate: x = [preprocess(grad); preprocess(loss)], [4, B P].
    grad_features = preprocess(grad, p).permute(2, 0, 1)
    loss_features = preprocess(loss, p).t()[:, :, None].expand(2, batch, n_params)
    x = torch.cat((grad_features, loss_features)).reshape(4, -1)
    h, c = lstm_cell(x, _columns(state.h), _columns(state.c), weights.weight_ih, weights.weight_hh, weights.bias)
    # Layer 2.
    w_f, w_i = weights.weight_forget, weights.weight_input
    f = (w_f[:hidden] @ h).reshape(batch, n_params) + w_f[hidden] * theta + w_f[hidden + 1] * state.f + weights.bias_forget
    i = (w_i[:hidden] @ h).reshape(batch, n_params) + w_i[hidden] * theta + w_i[hidden + 1] * state.i + weights.bias_input
    theta_next = torch.sigmoid(f) * theta - torch.sigmoid(i) * grad
    h, c = (t.reshape(hidden, batch, n_params).permute(1, 2, 0) for t in (h, c))
    return theta_next, MetaLSTMState(h, c, f, i)


def recomputed_meta_lstm_step(
    weights: MetaLSTMWeights, theta: Tensor, grad: Tensor, loss: Tensor, state: MetaLSTMState, p: float
) -> tuple[Tensor, MetaLSTMState]:
    """:func:`meta_lstm_step` under non-reentrant checkpointing: autograd keeps only the inputs and
    recomputes the step in the backward pass."""
    # preserve_rng_state=False: the step draws no random numbers.
    return checkpoint(meta_lstm_step, weights, theta, grad, loss, state, p, use_reentrant=False, preserve_rng_state=False)


def fused_meta_lstm_step(
    weights: MetaLSTMWeights, theta: Tensor, grad: Tensor, loss: Tensor, state: MetaLSTMState, p: float
) -> tuple[Tensor, MetaLSTMState]:
    """:func:`meta_lstm_step` as one fused operator (``torch.ops.fewshot_l2l.meta_lstm_step``,
    :mod:`fewshot_l2l.kernels`): the same arguments and results, to float rounding. First order: no gradient
    with respect to ``grad`` and ``loss``. Its backward keeps the step's inputs and recomputes the gates, as
    :func:`recomputed_meta_lstm_step` does, in one pass."""
    h, c = (s.permute(2, 0, 1).contiguous() for s in (state.h, state.c))  # [hidden, B, P]: no copy of our own state
    theta_next, h_next, c_next, f_next, i_next = kernels.meta_lstm_step_op(
        theta.contiguous(), grad.contiguous(), loss.contiguous(), h, c, state.f.contiguous(), state.i.contiguous(),
        *(weight.contiguous() for weight in weights), float(p))
    return theta_next, MetaLSTMState(h_next.permute(1, 2, 0), c_next.permute(1, 2, 0), f_next, i_next)


class CoordinateLSTMCell(nn.Module):
    """The parameters of a standard LSTM cell (as ``nn.LSTMCell``, one bias), in U(-0.01, 0.01); forward is :func:`lstm_cell`."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        # Gate order (input, forget, cell, output) as in nn.LSTMCell; the Meta-LSTM authors
        # initialize every weight in U(-0.01, 0.01).
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size).uniform_(-0.01, 0.01))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size).uniform_(-0.01, 0.01))
        self.bias = nn.Parameter(torch.empty(4 * hidden_size).uniform_(-0.01, 0.01))

    def forward(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` ``[N, input]``, ``h``/``c`` ``[N, hidden]`` -> new ``(h, c)`` (views of column-per-coordinate results)."""
        h, c = lstm_cell(x.t(), h.t(), c.t(), self.weight_ih, self.weight_hh, self.bias)
        return h.t(), c.t()


FORGET_BIAS_INIT = (4.0, 6.0)  # b_F ~ U(4, 6): the PyTorch port's range, ours by default
AUTHORS_FORGET_BIAS_INIT = (4.0, 5.0)  # b_F ~ U(4, 5): the authors' released Torch code


class MetaLSTMCell(nn.Module):
    """The parameters of layer 2.

    ``b_F ~ U(forget_bias_init)`` so the learner starts by remembering its parameters: U(4, 6) by
    default, the PyTorch port's range (the authors' Torch code draws U(4, 5), :data:`AUTHORS_FORGET_BIAS_INIT`);
    ``b_I ~ U(-5, -4)`` so it starts with a small learning rate, ``W_F``/``W_I`` in U(-0.01, 0.01) (both as the authors).
    """

    def __init__(self, hidden_size: int, forget_bias_init: tuple[float, float] = FORGET_BIAS_INIT) -> None:
        super().__init__()
        low, high = forget_bias_init
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"MetaLSTMCell: forget_bias_init must be a finite range (low < high), got {forget_bias_init!r}")
        self.weight_forget = nn.Parameter(torch.empty(hidden_size + 2).uniform_(-0.01, 0.01))
        self.weight_input = nn.Parameter(torch.empty(hidden_size + 2).uniform_(-0.01, 0.01))
        self.bias_forget = nn.Parameter(torch.empty(()).uniform_(low, high))
        self.bias_input = nn.Parameter(torch.empty(()).uniform_(-5.0, -4.0))


class MetaLSTM(nn.Module):
    """The Meta-LSTM update rule: the weights of :func:`meta_lstm_step`, and forward = one step.

    Args:
        hidden_size: hidden units of layer 1 (20 in the paper).
        p: preprocessing constant of Andrychowicz et al. (10).
        forget_bias_init: the range of ``b_F``'s uniform initialization (:class:`MetaLSTMCell`).
        step_kernel: how the step runs (:attr:`step_kernel`): ``"auto"`` (default) the fused operator of
            :mod:`fewshot_l2l.kernels` where it is built and applicable, else the plain torch step; ``"fused"``
            always the fused one (an error where it cannot run); ``"torch"`` always the plain one.

    The fused step (:func:`fused_meta_lstm_step`) runs for the first-order and evaluation steps on CPU (float32,
    float64) and CUDA (float32). ``"auto"`` runs the plain step instead for second order (``grad`` or ``loss``
    require grad), under ``torch.func`` transforms, for other dtypes and devices, and where the C++ kernels could
    not be built (said once, in one line).

    How the plain step is differentiated (:meth:`forward`): when ``grad`` or ``loss``
    require grad (second order), by plain autograd through :func:`meta_lstm_step`.
    When they are constants (first order, the default), the step runs under
    ``torch.utils.checkpoint``: only its inputs (the previous state, which the
    previous step produced anyway) are kept and the step is recomputed in the
    backward pass, instead of a dozen ``[B, P, hidden]`` tensors per step (a
    meta-batch of 16 miniImageNet learners would otherwise need tens of GB).
    Under ``no_grad`` (evaluation) the function runs without autograd bookkeeping.
    """

    def __init__(self, hidden_size: int = 20, p: float = 10.0,
                 forget_bias_init: tuple[float, float] = FORGET_BIAS_INIT, step_kernel: str = "auto") -> None:
        super().__init__()
        owner = type(self).__name__
        self.step_kernel = step_kernel
        if not isinstance(hidden_size, numbers.Integral) or isinstance(hidden_size, bool) or hidden_size < 1:
            raise ValueError(f"{owner}: hidden_size must be an integer >= 1, got {hidden_size!r}")
        if 4 * hidden_size * (hidden_size + 4) > 2**63 - 1:  # the layer-1 weight would not even have a size
            raise ValueError(f"{owner}: hidden_size={hidden_size} is far too large")
        if not isinstance(p, numbers.Real) or isinstance(p, bool) or not (math.isfinite(p) and p > 0):
            raise ValueError(f"{owner}: p must be a positive finite number, got p={p!r}")
        self.hidden_size, self.p = hidden_size, p
        self.lstm = CoordinateLSTMCell(4, hidden_size)
        self.cell = MetaLSTMCell(hidden_size, forget_bias_init)
        # CPU only: coordinates per chunk of episodes in the first-order and evaluation step (see forward).
        self.cpu_chunk_rows = 1 << 15
        # The evaluation and first-order steps; compile_step replaces them by compiled ones.
        self._step, self._recomputed_step = meta_lstm_step, recomputed_meta_lstm_step
        self._fused_step = fused_meta_lstm_step

    @property
    def step_kernel(self) -> str:
        """``"auto"``, ``"fused"`` or ``"torch"`` (class docstring); may be changed at any time (speed only: every
        kernel computes the same step)."""
        return self._step_kernel

    @step_kernel.setter
    def step_kernel(self, step_kernel: str) -> None:
        self._step_kernel = kernels.check_step_kernel(type(self).__name__, step_kernel)

    def uses_fused_step(self, theta: Tensor, grad: Tensor, loss: Tensor, state: MetaLSTMState) -> bool:
        """Whether :meth:`forward` runs the fused step on these inputs (:func:`fewshot_l2l.kernels.runs_fused`); with
        ``step_kernel="fused"``, a ``ValueError`` saying why where it cannot."""
        return kernels.runs_fused(type(self).__name__, self.step_kernel, theta, grad, loss, (*state, *self.weights()))

    def weights(self) -> MetaLSTMWeights:
        """The parameters, by name, as :func:`meta_lstm_step` takes them."""
        return MetaLSTMWeights(
            self.lstm.weight_ih, self.lstm.weight_hh, self.lstm.bias,
            self.cell.weight_forget, self.cell.weight_input, self.cell.bias_forget, self.cell.bias_input,
        )

    def initial_state(self, theta: Tensor) -> MetaLSTMState:
        """Zero recurrent state for parameters ``theta`` of shape ``[B, P]``."""
        zeros_hidden = theta.new_zeros(self.hidden_size, *theta.shape).permute(1, 2, 0)  # stored as meta_lstm_step stores it
        zeros = theta.new_zeros(theta.shape)
        return MetaLSTMState(zeros_hidden, zeros_hidden, zeros, zeros)

    def compile_step(self, **compile_kwargs) -> None:
        """Run the first-order and evaluation step through ``torch.compile`` (inductor) from now on.

        Inductor fuses the LSTM's elementwise gate arithmetic, a dozen passes
        over ``[B, P, hidden]`` tensors per step in eager mode, into a few loops
        (the fused step is one operator to it, compiled around).
        Compilation costs tens of seconds on a CPU the first time each shape is
        seen; off unless asked for (``--compile``). The second-order step stays eager.
        """
        self._step = torch.compile(meta_lstm_step, dynamic=False, **compile_kwargs)
        self._fused_step = torch.compile(fused_meta_lstm_step, dynamic=False, **compile_kwargs)  # one operator
        # Compiled around the checkpoint (not a checkpoint around the compiled step): the partitioner then
        # recomputes the forward inside one compiled backward (measured faster, docs/results/meta_step.md).
        self._recomputed_step = torch.compile(recomputed_meta_lstm_step, dynamic=False, **compile_kwargs)

    def forward(self, theta: Tensor, grad: Tensor, loss: Tensor, state: MetaLSTMState) -> tuple[Tensor, MetaLSTMState]:
        """One update of every coordinate of every episode.

        Args:
            theta: learner parameters ``[B, P]`` (the cell state ``theta_{t-1}``).
            grad: raw loss gradient at ``theta``, ``[B, P]``.
            loss: learner loss of each episode at ``theta``, ``[B]``.
            state: recurrent state from :meth:`initial_state` or the last call.

        Returns:
            ``(theta_t, new_state)``.
        """
        if grad.shape != theta.shape or theta.dim() != 2:
            raise ValueError(f"{type(self).__name__}: theta and grad must both be [B, P]; got {tuple(theta.shape)} and {tuple(grad.shape)}")
        if loss.shape != theta.shape[:1]:
            raise ValueError(f"{type(self).__name__}: loss must be [B]={tuple(theta.shape[:1])}, got {tuple(loss.shape)}")
        weights, state = self.weights(), MetaLSTMState(*state)
        if self.uses_fused_step(theta, grad, loss, state):
            return self._fused_step(weights, theta, grad, loss, state, self.p)
        if kernels.torch_func_active() or (torch.is_grad_enabled() and (grad.requires_grad or loss.requires_grad)):
            return meta_lstm_step(weights, theta, grad, loss, state, self.p)
        step = self._recomputed_step if torch.is_grad_enabled() else self._step
        batch, n_params = theta.shape
        per_chunk = batch if theta.device.type != "cpu" else max(1, self.cpu_chunk_rows // n_params)
        if per_chunk >= batch:
            return step(weights, theta, grad, loss, state, self.p)
        # On a CPU, episodes in chunks whose gate tensors fit in the last-level cache: one
        # Omniglot learner's [P, 4 hidden] gates are 9 MB, a meta-batch of 4 is 36 MB. Measured
        # for the meta-learner alone (Omniglot, 1 thread, CPU-s per episode): evaluation 0.08
        # instead of 0.10 at meta-batches 4 and 16; meta-training within noise (0.31-0.39).
        pieces = zip(*(_split_episodes(t, per_chunk) for t in (theta, grad, loss, *state)))
        chunks = [step(weights, theta, grad, loss, MetaLSTMState(*state), self.p) for theta, grad, loss, *state in pieces]
        thetas, states = zip(*chunks)
        return _cat_episodes(thetas), MetaLSTMState(*(_cat_episodes(parts) for parts in zip(*states)))


# Chunks of episodes for MetaLSTM.forward. torch.split rather than a slice per chunk: the backward of a slice
# adds a gradient of the whole tensor. The layer-1 state is split and concatenated in its [hidden, B, P]
# storage (see _columns): in the [B, P, hidden] order every copy would transpose, forward and backward.
def _split_episodes(tensor: Tensor, size: int) -> list[Tensor]:
    if tensor.dim() == 3:
        return [piece.permute(1, 2, 0) for piece in tensor.permute(2, 0, 1).split(size, dim=1)]
    return list(tensor.split(size))


def _cat_episodes(parts: list[Tensor]) -> Tensor:
    if parts[0].dim() == 3:
        return torch.cat([part.permute(2, 0, 1) for part in parts], dim=1).permute(1, 2, 0)
    return torch.cat(parts)


class MetaLearner(MetaLSTM):
    """The Meta-LSTM rule plus ``theta_0``: a two-layer coordinatewise meta-learner whose cell state is the learner's parameters.

    Args:
        init_params: flat initial learner parameters ``[P]``; they become the
            meta-learned initial cell state ``theta_0`` (``theta_init``).
        hidden_size: hidden units of layer 1 (20 in the paper).
        p: preprocessing constant of Andrychowicz et al. (10).
        forget_bias_init: the range of ``b_F``'s uniform initialization (:class:`MetaLSTMCell`).
        step_kernel: ``"auto"``, ``"fused"`` or ``"torch"``: how the step runs (:class:`MetaLSTM`).
    """

    def __init__(self, init_params: Tensor, hidden_size: int = 20, p: float = 10.0,
                 forget_bias_init: tuple[float, float] = FORGET_BIAS_INIT, step_kernel: str = "auto") -> None:
        if not isinstance(init_params, Tensor) or not init_params.is_floating_point():
            raise TypeError(f"MetaLearner: init_params must be a floating-point tensor [P], got {type(init_params).__name__}"
                            f"{'' if not isinstance(init_params, Tensor) else ' of dtype ' + str(init_params.dtype)}")
        if init_params.dim() != 1 or init_params.numel() == 0:
            raise ValueError(f"MetaLearner: init_params must be a non-empty flat vector [P], got shape {tuple(init_params.shape)}")
        if init_params.device.type != "meta" and not bool(torch.isfinite(init_params).all()):
            raise ValueError("MetaLearner: init_params holds NaN or infinite values")
        super().__init__(hidden_size, p, forget_bias_init, step_kernel)
        self.theta_init = nn.Parameter(init_params.detach().clone())

    @property
    def n_params(self) -> int:
        """Number of learner coordinates ``P``."""
        return self.theta_init.numel()

    def initial_theta(self, n_episodes: int) -> Tensor:
        """``theta_0`` expanded to ``[n_episodes, P]`` (a view: gradients reach ``theta_init``)."""
        return self.theta_init.expand(n_episodes, -1)


def meta_lstm_from_state_dict(state_dict: dict[str, Tensor], p: float = 10.0) -> MetaLSTM:
    """The update rule saved in the ``state_dict`` of a :class:`MetaLSTM` or of a :class:`MetaLearner`.

    The rule is the step's weights (``lstm.*``, ``cell.*``, read on their
    device); a meta-learner's ``theta_init``, the initialization of one learner
    architecture, is no part of it.
    """
    if "lstm.weight_hh" not in state_dict:
        raise ValueError("meta_lstm_from_state_dict: no 'lstm.weight_hh' entry: not the state dict of a MetaLSTM or MetaLearner")
    weight_hh = state_dict["lstm.weight_hh"]
    rule = MetaLSTM(weight_hh.shape[1], p).to(weight_hh.device)
    rule.load_state_dict({name: state_dict[name] for name in rule.state_dict() if name in state_dict})
    return rule
