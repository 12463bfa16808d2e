"""Fused coordinatewise steps: one operator per step, forward and backward, on CPU (C++) and CUDA (Triton).

The equations stay stated once, in readable torch (:func:`fewshot_l2l.meta_learner.meta_lstm_step`); these
kernels compute the same step in one pass over memory and are tested against it. Each step is a custom
operator with its autograd (``torch.library.custom_op`` + ``register_autograd``, a fake implementation for
``torch.compile``), so autograd and ``torch.compile`` see one operator:

* ``torch.ops.fewshot_l2l.meta_lstm_step`` - the Meta-LSTM step (:func:`meta_lstm_step_op`), and
  ``torch.ops.fewshot_l2l.meta_lstm_step_backward``, its backward, which recomputes the layer-1 gates from the
  step's inputs (no saved gates: docs/results/meta_step.md).

Backends, by device: ``cpu`` - :mod:`.cpu` (``coordinatewise.cpp``, compiled with g++ on first use and cached;
float32 and float64); ``cuda`` - :mod:`.triton_step` (Triton kernels; float32). The fused step is *first
order*: it gives no gradient with respect to the learner's gradient and loss (they are constants of the step,
as in the paper's first-order meta-gradient); second order runs the plain step. Which step runs is chosen by
the ``step_kernel`` setting (:data:`STEP_KERNELS`) of :class:`fewshot_l2l.meta_learner.MetaLSTM`.
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


def _check_meta_lstm_inputs(theta: Tensor, grad: Tensor, loss: Tensor, h: Tensor, c: Tensor, f: Tensor, i: Tensor,
                            weights: tuple[Tensor, ...]) -> None:
    owner = "fewshot_l2l::meta_lstm_step"
    if theta.dim() != 2:
        raise ValueError(f"{owner}: theta must be [B, P], got shape {tuple(theta.shape)}")
    batch, n_params = theta.shape
    hidden = h.shape[0] if h.dim() == 3 else -1
    expected = {"grad": (batch, n_params), "loss": (batch,), "h": (hidden, batch, n_params),
                "c": (hidden, batch, n_params), "f": (batch, n_params), "i": (batch, n_params),
                "weight_ih": (4 * hidden, 4), "weight_hh": (4 * hidden, hidden), "bias": (4 * hidden,),
                "weight_forget": (hidden + 2,), "weight_input": (hidden + 2,), "bias_forget": (), "bias_input": ()}
    named = dict(zip(("grad", "loss", "h", "c", "f", "i", *_WEIGHTS), (grad, loss, h, c, f, i, *weights)))
    for name, tensor in {"theta": theta, **named}.items():
        if name != "theta" and tuple(tensor.shape) != expected[name]:
            raise ValueError(f"{owner}: {name} must have shape {expected[name]} (hidden={hidden} from h [hidden, B, P]), "
                             f"got {tuple(tensor.shape)}")
        if tensor.dtype != theta.dtype or tensor.device != theta.device:
            raise ValueError(f"{owner}: {name} is {tensor.dtype} on {tensor.device}, theta {theta.dtype} on {theta.device}: "
                             "all inputs must share dtype and device")
        if not tensor.is_contiguous():
            raise ValueError(f"{owner}: {name} must be contiguous (call .contiguous())")


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
    for name, tensor, like in (("d_theta_next", d_theta_next, theta), ("d_h_next", d_h_next, h),
                               ("d_c_next", d_c_next, c), ("d_f_next", d_f_next, f), ("d_i_next", d_i_next, i),
                               ("f_next", f_next, f), ("i_next", i_next, i)):
        if tensor.shape != like.shape or tensor.dtype != like.dtype or not tensor.is_contiguous():
            raise ValueError(f"fewshot_l2l::meta_lstm_step_backward: {name} must be contiguous, {like.dtype}, of shape "
                             f"{tuple(like.shape)}; got {tensor.dtype} {tuple(tensor.shape)}")
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
