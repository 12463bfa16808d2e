"""Fused coordinatewise steps: one operator per step, forward and backward, on CPU (C++) and CUDA (Triton).

The equations stay stated once, in readable torch (:func:`fewshot_l2l.meta_learner.meta_lstm_step`); these
kernels compute the same step in one pass over memory and are tested against it. Each step is a custom
operator with its autograd (``torch.library.custom_op`` + ``register_autograd``, a fake implementation for
``torch.compile``), so autograd and ``torch.compile`` see one operator:

* ``torch.ops.fewshot_l2l.meta_lstm_step`` - the Meta-LSTM step (:func:`meta_lstm_step_op`), and
  ``torch.ops.fewshot_l2l.meta_lstm_step_backward``, its backward, which recomputes the layer-1 gates from the
  step's inputs (no saved gates: docs/results/meta_step.md);
* ``torch.ops.fewshot_l2l.andrychowicz_step`` and ``..._backward`` - the step of Andrychowicz et al.'s
  coordinatewise LSTM optimizer (:func:`andrychowicz_step_op`; the readable statement is
  :class:`fewshot_l2l.optim.rules.AndrychowiczRule`), the same way.

Backends, by device: ``cpu`` - :mod:`.cpu` (``coordinatewise.cpp``, compiled with g++ on first use and cached;
float32 and float64); ``cuda`` - :mod:`.triton_step` (Triton kernels; float32). The fused step is *first
order*: it gives no gradient with respect to the learner's gradient and loss (they are constants of the step,
as in the paper's first-order meta-gradient); second order runs the plain step. Which step runs is chosen by
the ``step_kernel`` setting (:data:`STEP_KERNELS`) of :class:`fewshot_l2l.meta_learner.MetaLSTM` and of the
update rules (:class:`fewshot_l2l.optim.rules.UpdateRule`), through :func:`runs_fused`.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from types import ModuleType

import torch
from torch import Tensor

STEP_KERNELS = ("auto", "fused", "torch")
"""``auto``: the fused kernel where it is built and applicable, else the plain torch step; ``fused``: the fused
kernel, an error where it cannot run; ``torch``: always the plain torch step."""

# The module implementing the kernels for each device type (tests point "cpu" at the Triton kernels under
# Triton's interpreter).
BACKENDS = {"cpu": "fewshot_l2l.kernels.cpu", "cuda": "fewshot_l2l.kernels.triton_step"}
DTYPES = {"cpu": (torch.float32, torch.float64), "cuda": (torch.float32,)}

logger = logging.getLogger("fewshot_l2l")
_said: set[str] = set()


def check_step_kernel(owner: str, step_kernel: object) -> str:
    """``step_kernel`` if it is one of :data:`STEP_KERNELS`; a ``ValueError`` naming ``owner`` otherwise."""
    if step_kernel not in STEP_KERNELS:
        raise ValueError(f"{owner}: step_kernel must be one of {', '.join(STEP_KERNELS)}, got {step_kernel!r}")
    return step_kernel  # type: ignore[return-value]


def torch_func_active() -> bool:
    """Whether a ``torch.func`` transform (grad, vmap, ...) is running: the fused operators have no batching or
    functional rules, and checkpointing's saved-tensor hooks do not work under them either."""
    return torch._C._functorch.peek_interpreter_stack() is not None


def fused_unsupported(theta: Tensor, grad: Tensor, loss: Tensor | None, others: tuple[Tensor, ...]) -> str | None:
    """Why a fused step cannot run on these tensors (``others``: the state and the weights), ``None`` if it can."""
    if torch_func_active():
        return "a torch.func transform (grad, vmap, ...) is running"
    if torch.is_grad_enabled() and (grad.requires_grad or (loss is not None and loss.requires_grad)):
        return "second order: gradients flow through grad and loss"
    for tensor in (grad, *(() if loss is None else (loss,)), *others):
        if tensor.dtype != theta.dtype or tensor.device != theta.device:
            return "the step's tensors differ in dtype or device"
    return unavailable_reason(theta.device, theta.dtype)


def runs_fused(owner: str, step_kernel: str, theta: Tensor, grad: Tensor, loss: Tensor | None,
               others: tuple[Tensor, ...]) -> bool:
    """Whether a step with setting ``step_kernel`` runs its fused operator on these tensors; for ``"fused"``, a
    ``ValueError`` naming ``owner`` and the reason where it cannot."""
    if step_kernel == "torch":
        return False
    reason = fused_unsupported(theta, grad, loss, others)
    if reason is not None and step_kernel == "fused":
        raise ValueError(f"{owner}: step_kernel='fused' cannot run this step: {reason}; use step_kernel='auto' (the plain "
                         "step where the fused one cannot run) or 'torch'")
    return reason is None


def backend(device_type: str) -> ModuleType:
    """The module with ``meta_lstm_forward``/``meta_lstm_backward`` for tensors on ``device_type``."""
    if device_type not in BACKENDS:
        raise ValueError(f"fewshot_l2l.kernels: no fused kernel for device type {device_type!r} (only {', '.join(BACKENDS)})")
    return importlib.import_module(BACKENDS[device_type])


def unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the fused step cannot run on ``device`` in ``dtype`` (``None``: it can). Builds the CPU kernels on
    first use; a failed build or a missing Triton is logged once, in one line."""
    kind = device.type
    if kind not in BACKENDS:
        return f"no fused kernel for device type {kind!r}"
    if BACKENDS[kind] == BACKENDS["cuda"]:
        if importlib.util.find_spec("triton") is None:
            return _say_once("cuda", "Triton is not installed: the meta-learner runs the plain torch step on CUDA")
        supported = DTYPES["cuda"]
    else:
        from . import cpu

        if cpu.library() is None:  # logs the reason itself, once
            return f"the C++ kernels could not be built ({cpu.unavailable_reason()})"
        supported = DTYPES[kind]
    if dtype not in supported:
        return f"dtype {dtype} (the fused {kind} kernel takes {', '.join(str(t) for t in supported)})"
    return None


def _say_once(key: str, message: str) -> str:
    if key not in _said:
        _said.add(key)
        logger.warning("fewshot_l2l: %s", message)
    return message


# ---- the Meta-LSTM step as one operator ----

_WEIGHTS = ("weight_ih", "weight_hh", "bias", "weight_forget", "weight_input", "bias_forget", "bias_input")


def _check_inputs(owner: str, theta: Tensor, expected: dict[str, tuple[Tensor, tuple[int, ...]]],
                  hidden_from: str) -> None:
    """``theta`` [B, P] and each ``name: (tensor, shape)`` of ``expected``: that shape, theta's dtype and device,
    contiguous; a ``ValueError`` naming the argument at fault."""
    if theta.dim() != 2:
        raise ValueError(f"{owner}: theta must be [B, P], got shape {tuple(theta.shape)}")
    for name, (tensor, shape) in {"theta": (theta, tuple(theta.shape)), **expected}.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{owner}: {name} must have shape {shape} (B, P from theta, hidden from {hidden_from}), "
                             f"got {tuple(tensor.shape)}")
        if tensor.dtype != theta.dtype or tensor.device != theta.device:
            raise ValueError(f"{owner}: {name} is {tensor.dtype} on {tensor.device}, theta {theta.dtype} on {theta.device}: "
                             "all inputs must share dtype and device")
        if not tensor.is_contiguous():
            raise ValueError(f"{owner}: {name} must be contiguous (call .contiguous())")


def _hidden(state: Tensor) -> int:
    return state.shape[0] if state.dim() == 3 else -1


def _check_meta_lstm_inputs(theta: Tensor, grad: Tensor, loss: Tensor, h: Tensor, c: Tensor, f: Tensor, i: Tensor,
                            weights: tuple[Tensor, ...]) -> None:
    batch, n_params = theta.shape if theta.dim() == 2 else (-1, -1)
    hidden = _hidden(h)
    shapes = ((batch, n_params), (batch,), (hidden, batch, n_params), (hidden, batch, n_params), (batch, n_params),
              (batch, n_params), (4 * hidden, 4), (4 * hidden, hidden), (4 * hidden,), (hidden + 2,), (hidden + 2,), (), ())
    tensors = (grad, loss, h, c, f, i, *weights)
    _check_inputs("fewshot_l2l::meta_lstm_step", theta, dict(zip(("grad", "loss", "h", "c", "f", "i", *_WEIGHTS),
                                                                  zip(tensors, shapes))), "h [hidden, B, P]")


def _check_gradients(owner: str, named: dict[str, tuple[Tensor, Tensor]]) -> None:
    for name, (tensor, like) in named.items():
        if tensor.shape != like.shape or tensor.dtype != like.dtype or not tensor.is_contiguous():
            raise ValueError(f"{owner}: {name} must be contiguous, {like.dtype}, of shape {tuple(like.shape)}; "
                             f"got {tensor.dtype} {tuple(tensor.shape)}")


@torch.library.custom_op("fewshot_l2l::meta_lstm_step", mutates_args=())
def meta_lstm_step_op(theta: Tensor, grad: Tensor, loss: Tensor, h: Tensor, c: Tensor, f: Tensor, i: Tensor,
                      weight_ih: Tensor, weight_hh: Tensor, bias: Tensor, weight_forget: Tensor, weight_input: Tensor,
                      bias_forget: Tensor, bias_input: Tensor, p: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One fused Meta-LSTM step: :func:`fewshot_l2l.meta_learner.meta_lstm_step` on contiguous tensors, the
    layer-1 state in its ``[hidden, B, P]`` storage order.

    Args: ``theta``, ``grad``, ``f``, ``i`` ``[B, P]``; ``loss`` ``[B]``; ``h``, ``c`` ``[hidden, B, P]``; the
    seven weights of :class:`fewshot_l2l.meta_learner.MetaLSTMWeights`; ``p`` the preprocessing constant.
    Returns ``(theta_next, h_next, c_next, f_next, i_next)`` in the same layouts. Differentiable with respect
    to everything but ``grad`` and ``loss`` (asking for those is an error in the backward).
    """
    weights = (weight_ih, weight_hh, bias, weight_forget, weight_input, bias_forget, bias_input)
    _check_meta_lstm_inputs(theta, grad, loss, h, c, f, i, weights)
    return backend(theta.device.type).meta_lstm_forward(theta, grad, loss, h, c, f, i, weights, p)


@meta_lstm_step_op.register_fake
def _(theta, grad, loss, h, c, f, i, weight_ih, weight_hh, bias, weight_forget, weight_input, bias_forget,
      bias_input, p):
    return (torch.empty_like(theta), torch.empty_like(h), torch.empty_like(c), torch.empty_like(f),
            torch.empty_like(i))


@torch.library.custom_op("fewshot_l2l::meta_lstm_step_backward", mutates_args=())
def meta_lstm_step_backward_op(
    d_theta_next: Tensor, d_h_next: Tensor, d_c_next: Tensor, d_f_next: Tensor, d_i_next: Tensor,
    theta: Tensor, grad: Tensor, loss: Tensor, h: Tensor, c: Tensor, f: Tensor, i: Tensor, f_next: Tensor,
    i_next: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias: Tensor, weight_forget: Tensor, weight_input: Tensor,
    bias_forget: Tensor, bias_input: Tensor, p: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The backward of :func:`meta_lstm_step_op`: from the gradients of its five outputs (contiguous, their
    shapes), its inputs and its saved outputs ``f_next``, ``i_next``, the gradients of ``theta``, ``h``, ``c``,
    ``f``, ``i`` and of the seven weights (reduced over all coordinates)."""
    weights = (weight_ih, weight_hh, bias, weight_forget, weight_input, bias_forget, bias_input)
    _check_meta_lstm_inputs(theta, grad, loss, h, c, f, i, weights)
    _check_gradients("fewshot_l2l::meta_lstm_step_backward", {
        "d_theta_next": (d_theta_next, theta), "d_h_next": (d_h_next, h), "d_c_next": (d_c_next, c),
        "d_f_next": (d_f_next, f), "d_i_next": (d_i_next, i), "f_next": (f_next, f), "i_next": (i_next, i)})
    return backend(theta.device.type).meta_lstm_backward(d_theta_next, d_h_next, d_c_next, d_f_next, d_i_next, theta,
                                                         grad, loss, h, c, f, i, f_next, i_next, weights, p)


@meta_lstm_step_backward_op.register_fake
def _(d_theta_next, d_h_next, d_c_next, d_f_next, d_i_next, theta, grad, loss, h, c, f, i, f_next, i_next,
      weight_ih, weight_hh, bias, weight_forget, weight_input, bias_forget, bias_input, p):
    return tuple(torch.empty_like(t) for t in (theta, h, c, f, i, weight_ih, weight_hh, bias, weight_forget,
                                               weight_input, bias_forget, bias_input))


def _setup_meta_lstm_context(ctx, inputs, output) -> None:
    theta, grad, loss, h, c, f, i, *weights, p = inputs
    # The step's inputs and its gate outputs f_next, i_next: everything the backward recomputes the gates from.
    ctx.save_for_backward(theta, grad, loss, h, c, f, i, output[3], output[4], *weights)
    ctx.p = p


def _meta_lstm_backward(ctx, d_theta_next, d_h_next, d_c_next, d_f_next, d_i_next):
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        raise RuntimeError("fewshot_l2l::meta_lstm_step has no gradient with respect to grad and loss (it is the "
                           "first-order step); differentiate through them with the plain step (step_kernel='torch')")
    theta, grad, loss, h, c, f, i, f_next, i_next, *weights = ctx.saved_tensors
    incoming = [torch.zeros_like(like) if d is None else d.contiguous()
                for d, like in zip((d_theta_next, d_h_next, d_c_next, d_f_next, d_i_next), (theta, h, c, f, i))]
    d_theta, d_h, d_c, d_f, d_i, *d_weights = meta_lstm_step_backward_op(
        *incoming, theta, grad, loss, h, c, f, i, f_next, i_next, *weights, ctx.p)
    return (d_theta, None, None, d_h, d_c, d_f, d_i, *d_weights, None)


meta_lstm_step_op.register_autograd(_meta_lstm_backward, setup_context=_setup_meta_lstm_context)


# ---- the step of Andrychowicz et al.'s LSTM optimizer as one operator ----

_ANDRYCHOWICZ_WEIGHTS = ("weight_ih1", "weight_hh1", "bias1", "weight_ih2", "weight_hh2", "bias2", "weight_out", "bias_out")


def _check_andrychowicz_inputs(theta: Tensor, grad: Tensor, h1: Tensor, c1: Tensor, h2: Tensor, c2: Tensor,
                               weights: tuple[Tensor, ...]) -> None:
    batch, n_params = theta.shape if theta.dim() == 2 else (-1, -1)
    hidden = _hidden(h1)
    state = (hidden, batch, n_params)
    shapes = ((batch, n_params), state, state, state, state, (4 * hidden, 2), (4 * hidden, hidden), (4 * hidden,),
              (4 * hidden, hidden), (4 * hidden, hidden), (4 * hidden,), (1, hidden), (1,))
    names = ("grad", "h1", "c1", "h2", "c2", *_ANDRYCHOWICZ_WEIGHTS)
    _check_inputs("fewshot_l2l::andrychowicz_step", theta, dict(zip(names, zip((grad, h1, c1, h2, c2, *weights), shapes))),
                  "h1 [hidden, B, P]")


@torch.library.custom_op("fewshot_l2l::andrychowicz_step", mutates_args=())
def andrychowicz_step_op(theta: Tensor, grad: Tensor, h1: Tensor, c1: Tensor, h2: Tensor, c2: Tensor,
                         weight_ih1: Tensor, weight_hh1: Tensor, bias1: Tensor, weight_ih2: Tensor, weight_hh2: Tensor,
                         bias2: Tensor, weight_out: Tensor, bias_out: Tensor, p: float,
                         output_scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One fused step of the coordinatewise LSTM optimizer (:class:`fewshot_l2l.optim.rules.AndrychowiczRule`
    without global averaging cells): ``x = preprocess(grad)`` -> LSTM(2 -> H) -> LSTM(H -> H) ->
    ``theta + output_scale (weight_out h2 + bias_out)``.

    Args: ``theta``, ``grad`` ``[B, P]``; the layers' states ``h1``, ``c1``, ``h2``, ``c2`` ``[hidden, B, P]``; the
    weights of ``layer1``, ``layer2`` (as :class:`fewshot_l2l.meta_learner.CoordinateLSTMCell`) and ``output``
    (``nn.Linear(hidden, 1)``). Returns ``(theta_next, h1, c1, h2, c2)``. Differentiable with respect to everything
    but ``grad``.
    """
    weights = (weight_ih1, weight_hh1, bias1, weight_ih2, weight_hh2, bias2, weight_out, bias_out)
    _check_andrychowicz_inputs(theta, grad, h1, c1, h2, c2, weights)
    return backend(theta.device.type).andrychowicz_forward(theta, grad, h1, c1, h2, c2, weights, p, output_scale)


@andrychowicz_step_op.register_fake
def _(theta, grad, h1, c1, h2, c2, weight_ih1, weight_hh1, bias1, weight_ih2, weight_hh2, bias2, weight_out, bias_out,
      p, output_scale):
    return tuple(torch.empty_like(t) for t in (theta, h1, c1, h2, c2))


@torch.library.custom_op("fewshot_l2l::andrychowicz_step_backward", mutates_args=())
def andrychowicz_step_backward_op(
    d_theta_next: Tensor, d_h1: Tensor, d_c1: Tensor, d_h2: Tensor, d_c2: Tensor, theta: Tensor, grad: Tensor,
    h1: Tensor, c1: Tensor, h2: Tensor, c2: Tensor, weight_ih1: Tensor, weight_hh1: Tensor, bias1: Tensor,
    weight_ih2: Tensor, weight_hh2: Tensor, bias2: Tensor, weight_out: Tensor, bias_out: Tensor, p: float,
    output_scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The backward of :func:`andrychowicz_step_op` (both layers recomputed from its inputs): the gradients of
    ``theta``, the four states and the eight weights."""
    weights = (weight_ih1, weight_hh1, bias1, weight_ih2, weight_hh2, bias2, weight_out, bias_out)
    _check_andrychowicz_inputs(theta, grad, h1, c1, h2, c2, weights)
    _check_gradients("fewshot_l2l::andrychowicz_step_backward", {
        "d_theta_next": (d_theta_next, theta), "d_h1": (d_h1, h1), "d_c1": (d_c1, c1), "d_h2": (d_h2, h2),
        "d_c2": (d_c2, c2)})
    return backend(theta.device.type).andrychowicz_backward((d_theta_next, d_h1, d_c1, d_h2, d_c2), theta, grad, h1, c1,
                                                            h2, c2, weights, p, output_scale)


@andrychowicz_step_backward_op.register_fake
def _(d_theta_next, d_h1, d_c1, d_h2, d_c2, theta, grad, h1, c1, h2, c2, weight_ih1, weight_hh1, bias1, weight_ih2,
      weight_hh2, bias2, weight_out, bias_out, p, output_scale):
    return tuple(torch.empty_like(t) for t in (theta, h1, c1, h2, c2, weight_ih1, weight_hh1, bias1, weight_ih2,
                                               weight_hh2, bias2, weight_out, bias_out))


def _setup_andrychowicz_context(ctx, inputs, output) -> None:
    *tensors, p, output_scale = inputs
    ctx.save_for_backward(*tensors)  # the step's inputs: the backward recomputes both layers from them
    ctx.p, ctx.output_scale = p, output_scale


def _andrychowicz_backward(ctx, *output_grads):
    if ctx.needs_input_grad[1]:
        raise RuntimeError("fewshot_l2l::andrychowicz_step has no gradient with respect to grad (it is the first-order "
                           "step); differentiate through it with the plain step (step_kernel='torch')")
    theta, grad, h1, c1, h2, c2, *weights = ctx.saved_tensors
    incoming = [torch.zeros_like(like) if d is None else d.contiguous()
                for d, like in zip(output_grads, (theta, h1, c1, h2, c2))]
    d_theta, d_h1, d_c1, d_h2, d_c2, *d_weights = andrychowicz_step_backward_op(
        *incoming, theta, grad, h1, c1, h2, c2, *weights, ctx.p, ctx.output_scale)
    return (d_theta, None, d_h1, d_c1, d_h2, d_c2, *d_weights, None, None)


andrychowicz_step_op.register_autograd(_andrychowicz_backward, setup_context=_setup_andrychowicz_context)
