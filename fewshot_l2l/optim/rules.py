"""Coordinatewise learned update rules, each one functional and differentiable.

An update rule maps, for a batch of ``B`` problems with ``P`` coordinates each,
``(theta [B, P], grad [B, P], loss [B], state) -> (theta_next [B, P], state)``.
Every tensor of ``state`` has leading shape ``[B, P]``, so one coordinate's
recurrent state is one row: the :class:`fewshot_l2l.optim.LearnedOptimizer`
stores it per parameter and concatenates it back for a vectorized step, and
meta-training (:mod:`fewshot_l2l.optim.rule_training`) backpropagates through
the very same :meth:`UpdateRule.forward`. There is one implementation of each
rule:

1. :class:`MetaLSTMRule` - the Meta-LSTM of Ravi & Larochelle: the step module
   :class:`fewshot_l2l.meta_learner.MetaLSTM`, whose forward is the update
   ``theta_t = sigmoid(f_t) theta_{t-1} - sigmoid(i_t) grad_t``.
2. :class:`AndrychowiczRule` - the optimizer of Andrychowicz et al. (NIPS 2016):
   a two-layer coordinatewise LSTM (20 units per layer) over the preprocessed
   gradient (p = 10), a learned linear output times an output scale (0.1),
   ``theta_t = theta_{t-1} + 0.1 * W h2_t + b``; weights shared by all coordinates.
   With ``gac_cells > 0`` it is the paper's LSTM with *global averaging cells*
   (kind ``andrychowicz-gac``), no longer coordinatewise.
3. :class:`~fewshot_l2l.optim.ntm.NTMBFGSRule` - the LSTM with GAC as the controller
   of a memory shared by all coordinates (the paper's "NTM-BFGS").

Rules that look beyond one coordinate (``coordinatewise = False``) receive the
problem's :class:`~fewshot_l2l.optim.layout.ParamLayout` (which coordinates form
which tensor) as ``layout``; a state field named in ``shared_fields`` is one
tensor per problem (leading shape ``[B]``, not ``[B, P]``), e.g. a memory.

Fused kernels (:mod:`fewshot_l2l.kernels`): every rule has a ``step_kernel`` setting (``auto``, ``fused``,
``torch``). The Meta-LSTM rule and the plain coordinatewise LSTM rule (1, and 2 without GAC) have one fused
operator per step, which ``auto`` runs where it is built and applicable (first order, no ``torch.func``,
supported dtype and device); GAC and NTM-BFGS couple the coordinates through means and a shared memory and
stay on the plain step.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .. import kernels
from ..meta_learner import CoordinateLSTMCell, MetaLSTM, MetaLSTMState, meta_lstm_from_state_dict
from ..preprocess import preprocess
from .layout import ParamLayout, segment_mean

GAC_SCOPES = ("tensor", "model")


def _check_step_inputs(owner: str, theta: Tensor, grad: Tensor, loss: Tensor | None) -> None:
    if theta.dim() != 2 or grad.shape != theta.shape:
        raise ValueError(f"{owner}: theta and grad must both be [B, P]; got {tuple(theta.shape)} and {tuple(grad.shape)}")
    if loss is not None and loss.shape != theta.shape[:1]:
        raise ValueError(f"{owner}: loss must be [B]={tuple(theta.shape[:1])}, got {tuple(loss.shape)}")


class UpdateRule(nn.Module):
    """Base class of coordinatewise update rules (see the module docstring for the contract).

    Subclasses define :meth:`initial_state` and :meth:`forward`, and set
    ``needs_loss`` when the loss is an input of the rule, ``coordinatewise = False``
    when a coordinate's update depends on other coordinates (then it cannot be
    computed on blocks of coordinates), ``shared_fields`` for state fields of
    leading shape ``[B]`` shared by all coordinates of a problem.
    """

    needs_loss: bool = False
    coordinatewise: bool = True
    shared_fields: tuple[str, ...] = ()
    kind: str = ""
    _step_kernel: str = "auto"

    @property
    def step_kernel(self) -> str:
        """How the step runs: ``"auto"`` (the fused operator of :mod:`fewshot_l2l.kernels` where the rule has one
        and it is applicable), ``"fused"`` or ``"torch"``. Setting it on a rule made of rules (e.g. one per layer
        type) sets it on each of them."""
        return self._step_kernel

    @step_kernel.setter
    def step_kernel(self, step_kernel: str) -> None:
        kernels.check_step_kernel(type(self).__name__, step_kernel)
        nested = [module for module in self.modules() if module is not self and isinstance(module, UpdateRule)]
        for rule in nested:
            rule.step_kernel = step_kernel
        reason = self.plain_only()
        if step_kernel == "fused" and not nested and reason is not None:
            raise ValueError(f"{type(self).__name__}: step_kernel='fused' is impossible: {reason}; use 'auto' or 'torch'")
        self._step_kernel = step_kernel

    def plain_only(self) -> str | None:
        """Why this rule has no fused step (``None``: it has one)."""
        return "no fused kernel implements this rule"

    def initial_state(self, theta: Tensor) -> tuple[Tensor, ...]:
        """Fresh recurrent state for parameters ``theta`` ``[B, P]``: a NamedTuple of tensors with leading shape ``[B, P]``."""
        raise NotImplementedError

    def forward(self, theta: Tensor, grad: Tensor, loss: Tensor | None, state: tuple[Tensor, ...],
                layout: ParamLayout | None = None) -> tuple[Tensor, tuple[Tensor, ...]]:
        """One update of every coordinate: returns ``(theta_next, new_state)``; ``layout`` (``None``: one tensor)
        matters only to rules that are not coordinatewise."""
        raise NotImplementedError

    def config(self) -> dict:
        """Constructor arguments, stored in checkpoints so that :func:`fewshot_l2l.optim.build_rule` can rebuild the rule."""
        raise NotImplementedError


class MetaLSTMRule(UpdateRule):
    """Rule (1): the Meta-LSTM step (:class:`~fewshot_l2l.meta_learner.MetaLSTM`) under the update-rule contract.

    Args:
        meta_lstm: the step module, e.g. the rule of a few-shot checkpoint
            (:meth:`from_checkpoint`); a fresh one of ``hidden_size`` units if ``None``.
        hidden_size: layer-1 units of a fresh step module.
        step_kernel: ``"auto"``, ``"fused"`` or ``"torch"`` (:class:`~fewshot_l2l.meta_learner.MetaLSTM`); ``None``
            keeps the step module's own setting.
    """

    needs_loss = True
    kind = "meta-lstm"

    def __init__(self, meta_lstm: MetaLSTM | None = None, hidden_size: int = 20, step_kernel: str | None = None) -> None:
        super().__init__()
        self.meta_lstm = MetaLSTM(hidden_size) if meta_lstm is None else meta_lstm
        if step_kernel is not None:
            self.step_kernel = step_kernel

    @property
    def step_kernel(self) -> str:  # type: ignore[override]
        """The step module's setting (:attr:`fewshot_l2l.meta_learner.MetaLSTM.step_kernel`)."""
        return self.meta_lstm.step_kernel

    @step_kernel.setter
    def step_kernel(self, step_kernel: str) -> None:
        self.meta_lstm.step_kernel = step_kernel

    def plain_only(self) -> str | None:
        return None

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> "MetaLSTMRule":
        """The rule learned by few-shot meta-training: the step weights of a :func:`fewshot_l2l.training.meta_train`
        checkpoint's meta-learner (its entry ``"meta_learner"``; the learner initialization ``theta_0`` is left out)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"MetaLSTMRule.from_checkpoint: checkpoint {path} does not exist")
        try:
            meta_lstm = meta_lstm_from_state_dict(torch.load(path, map_location=device, weights_only=True)["meta_learner"])
        except (KeyError, TypeError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
            raise ValueError(f"MetaLSTMRule.from_checkpoint: {path} is not a few-shot checkpoint or is corrupt: {error}") from error
        return cls(meta_lstm)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Rules saved before the step module existed held a whole MetaLearner ("meta_learner.*", with an
        # empty theta_init): read them as the step module's weights.
        old = prefix + "meta_learner."
        for key in [key for key in state_dict if key.startswith(old)]:
            value = state_dict.pop(key)
            if key != old + "theta_init":
                state_dict[prefix + "meta_lstm." + key[len(old):]] = value
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def initial_state(self, theta: Tensor) -> MetaLSTMState:
        return self.meta_lstm.initial_state(theta)

    def forward(self, theta: Tensor, grad: Tensor, loss: Tensor | None, state: MetaLSTMState,
                layout: ParamLayout | None = None) -> tuple[Tensor, MetaLSTMState]:
        if loss is None:
            raise ValueError("MetaLSTMRule: the Meta-LSTM takes the loss as an input; pass loss [B]")
        return self.meta_lstm(theta, grad, loss, state)

    def config(self) -> dict:
        return {"rule": self.kind, "hidden_size": self.meta_lstm.hidden_size}


class AndrychowiczState(NamedTuple):
    """Recurrent state of the two LSTM layers, each tensor ``[B, P, hidden]``."""

    h1: Tensor
    c1: Tensor
    h2: Tensor
    c2: Tensor


class AndrychowiczRule(UpdateRule):
    """Rule (2): the coordinatewise two-layer LSTM optimizer of Andrychowicz et al. (2016), optionally with GAC.

    ``x_t = preprocess(grad_t)`` (2 features, p = 10) -> LSTM(2 -> hidden) ->
    LSTM(hidden -> hidden) -> linear(hidden -> 1) -> times ``output_scale``;
    the result is added to ``theta``. Both LSTM layers are standard LSTM cells
    (the equations of ``nn.LSTMCell``; :class:`CoordinateLSTMCell` computes them
    with one matmul per layer for all coordinates).

    Global averaging cells (paper, section 3.2 "Information sharing between
    coordinates"): in each layer, the first ``gac_cells`` of the ``hidden``
    cells have their outgoing activation ``h`` replaced, at every step, by its
    mean over the coordinates - of the coordinate's parameter tensor
    (``gac_scope="tensor"``, from the ``layout`` passed to :meth:`forward`; all of
    ``theta`` when there is none) or of the whole problem (``"model"``). The
    averaged ``h`` is what the next layer and the layer's own recurrence see;
    the cell states ``c`` stay per coordinate. A mean of, e.g., squared
    preprocessed gradients is how the rule can express gradient-norm-dependent
    steps such as L2 clipping.

    Args:
        hidden_size: units per LSTM layer (20 in the paper).
        p: gradient preprocessing constant (10).
        output_scale: fixed factor on the linear output (0.1 in the paper).
        gac_cells: averaged cells per layer (0: the plain coordinatewise rule), at most ``hidden_size``.
        gac_scope: ``"tensor"`` or ``"model"``, what the averages run over.
        step_kernel: ``"auto"``, ``"fused"`` or ``"torch"`` (:attr:`UpdateRule.step_kernel`): the plain rule
            (no GAC) has a fused step, :func:`fused_andrychowicz_step`.
    """

    def __init__(self, hidden_size: int = 20, p: float = 10.0, output_scale: float = 0.1, gac_cells: int = 0,
                 gac_scope: str = "tensor", input_size: int = 2, step_kernel: str = "auto") -> None:
        super().__init__()
        if hidden_size < 1:
            raise ValueError(f"{type(self).__name__}: hidden_size must be >= 1, got {hidden_size}")
        if p <= 0 or output_scale <= 0:
            raise ValueError(f"{type(self).__name__}: p and output_scale must be positive, got p={p}, output_scale={output_scale}")
        if not 0 <= gac_cells <= hidden_size:
            raise ValueError(f"{type(self).__name__}: gac_cells must be in [0, hidden_size={hidden_size}], got {gac_cells}")
        if gac_scope not in GAC_SCOPES:
            raise ValueError(f"{type(self).__name__}: gac_scope must be one of {GAC_SCOPES}, got {gac_scope!r}")
        self.hidden_size, self.p, self.output_scale = hidden_size, p, output_scale
        self.gac_cells, self.gac_scope = gac_cells, gac_scope
        self.coordinatewise = gac_cells == 0
        self.layer1 = CoordinateLSTMCell(input_size, hidden_size)
        self.layer2 = CoordinateLSTMCell(hidden_size, hidden_size)
        self.output = nn.Linear(hidden_size, 1)
        # nn.LSTMCell's default initialization U(-1/sqrt(H), 1/sqrt(H)): CoordinateLSTMCell's
        # U(-0.01, 0.01) (the Meta-LSTM authors' choice) would make both layers start almost inert.
        bound = 1.0 / math.sqrt(hidden_size)
        with torch.no_grad():
            for layer in (self.layer1, self.layer2):
                for weight in (layer.weight_ih, layer.weight_hh, layer.bias):
                    weight.uniform_(-bound, bound)
        self.step_kernel = step_kernel

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "andrychowicz-gac" if self.gac_cells else "andrychowicz"

    def plain_only(self) -> str | None:
        if self.layer1.input_size != 2 or type(self).forward is not AndrychowiczRule.forward:
            return (f"{type(self).__name__}'s controller reads more than the preprocessed gradient (NTM-BFGS: the reads "
                    "of a memory shared by all coordinates)")
        if self.gac_cells:
            return "global averaging cells (GAC) make each step depend on means over many coordinates"
        return None

    def initial_state(self, theta: Tensor) -> AndrychowiczState:
        zeros = theta.new_zeros(*theta.shape, self.hidden_size)
        return AndrychowiczState(zeros, zeros, zeros, zeros)

    def average_cells(self, h: Tensor, layout: ParamLayout | None) -> Tensor:
        """``h`` ``[B, P, hidden]`` with its first ``gac_cells`` columns replaced by their means (see the class docstring)."""
        if not self.gac_cells:
            return h
        scope = layout if self.gac_scope == "tensor" else None
        return torch.cat((segment_mean(h[..., : self.gac_cells], scope), h[..., self.gac_cells:]), dim=-1)

    def controller(self, x: Tensor, state: tuple[Tensor, ...], layout: ParamLayout | None) -> AndrychowiczState:
        """Both LSTM layers (with GAC) on inputs ``x`` ``[B, P, input]``: the new ``(h1, c1, h2, c2)``, each ``[B, P, hidden]``."""
        shape, rows = (*x.shape[:2], self.hidden_size), x.shape[0] * x.shape[1]
        h1, c1, h2, c2 = (s.reshape(rows, self.hidden_size) for s in state[:4])
        h1, c1 = self.layer1(x.reshape(rows, -1), h1, c1)
        h1 = self.average_cells(h1.view(shape), layout)
        h2, c2 = self.layer2(h1.reshape(rows, self.hidden_size), h2, c2)
        h2 = self.average_cells(h2.view(shape), layout)
        return AndrychowiczState(h1, c1.view(shape), h2, c2.view(shape))

    def forward(self, theta: Tensor, grad: Tensor, loss: Tensor | None, state: AndrychowiczState,
                layout: ParamLayout | None = None) -> tuple[Tensor, AndrychowiczState]:
        _check_step_inputs(type(self).__name__, theta, grad, loss)
        if layout is not None:
            layout.check(type(self).__name__, theta.shape[1])
        if self.plain_only() is None and kernels.runs_fused(type(self).__name__, self.step_kernel, theta, grad, None,
                                                            (*state, *self.parameters())):
            return fused_andrychowicz_step(self, theta, grad, AndrychowiczState(*state))
        new_state = self.controller(preprocess(grad, self.p), state, layout)
        update = self.output(new_state.h2).view(theta.shape) * self.output_scale
        return theta + update, new_state

    def config(self) -> dict:
        config = {"rule": self.kind, "hidden_size": self.hidden_size, "p": self.p, "output_scale": self.output_scale}
        if self.gac_cells:  # the plain rule's config as before GAC existed
            config.update(gac_cells=self.gac_cells, gac_scope=self.gac_scope)
        return config


def fused_andrychowicz_step(rule: AndrychowiczRule, theta: Tensor, grad: Tensor,
                            state: AndrychowiczState) -> tuple[Tensor, AndrychowiczState]:
    """:meth:`AndrychowiczRule.forward` (no GAC) as one fused operator (``torch.ops.fewshot_l2l.andrychowicz_step``,
    :mod:`fewshot_l2l.kernels`): the same results to float rounding, first order (no gradient with respect to
    ``grad``). The states travel in their ``[hidden, B, P]`` storage order, as the plain step leaves them."""
    columns = (s.permute(2, 0, 1).contiguous() for s in state)
    weights = (rule.layer1.weight_ih, rule.layer1.weight_hh, rule.layer1.bias, rule.layer2.weight_ih,
               rule.layer2.weight_hh, rule.layer2.bias, rule.output.weight, rule.output.bias)
    theta_next, *new_state = kernels.andrychowicz_step_op(theta.contiguous(), grad.contiguous(), *columns,
                                                          *(w.contiguous() for w in weights), float(rule.p),
                                                          float(rule.output_scale))
    return theta_next, AndrychowiczState(*(s.permute(1, 2, 0) for s in new_state))
