"""The Meta-LSTM as a drop-in for ``learn2learn.algorithms.MAML``: wrap any ``nn.Module``, ``clone()``, ``adapt(loss)``.

A learn2learn training loop runs unchanged with ``MAML(model, lr=...)`` replaced by ``MetaLSTMAlgorithm(model)``::

    meta = MetaLSTMAlgorithm(model)                            # model's parameters are theta_0
    opt = torch.optim.Adam(meta.parameters(), 1e-3)     # theta_0 and the update rule's weights
    for task in tasks:
        learner = meta.clone()
        for _ in range(inner_steps):
            learner.adapt(loss_fn(learner(support_x), support_y))
        loss_fn(learner(query_x), query_y).backward()   # reaches the rule and theta_0 through the adapted parameters
    opt.step()

``adapt`` applies one step of the wrapped update rule (default: the Meta-LSTM of
:class:`fewshot_l2l.meta_learner.MetaLSTM`, through :class:`fewshot_l2l.optim.rules.MetaLSTMRule`; any
:class:`~fewshot_l2l.optim.rules.UpdateRule` works) to all adapted parameters at once, flattened into one
``[1, P]`` problem as :class:`fewshot_l2l.optim.LearnedOptimizer` does, but out of place and differentiably.
The learner evaluates the wrapped module on its adapted parameters with ``torch.func.functional_call``; its
buffers (batch-norm running statistics) are the wrapped module's own, as for a learn2learn MAML clone.

``first_order`` has the meaning of the paper (and of :func:`fewshot_l2l.adaptation.adapt`'s default): the
learner's loss and gradient enter the rule as constants, while the meta-gradient still flows through the
``theta`` recursion into the rule's weights and ``theta_0``. ``first_order=False`` keeps the full
meta-gradient (gradients through the gradient). This module needs no learn2learn.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..optim.rules import MetaLSTMRule, UpdateRule


class MetaLSTMAlgorithm(nn.Module):
    """The Meta-LSTM meta-learner around ``module``, in the shape of ``learn2learn.algorithms.MAML``.

    Args:
        module: the learner; its trainable parameters are the meta-learned initialization ``theta_0``.
        hidden_size: layer-1 units of a fresh Meta-LSTM rule (20 in the paper).
        first_order: treat the learner's loss and gradient as constants (the paper's simplification).
        allow_unused: a parameter the loss does not depend on gets a zero gradient instead of an error.
        rule: the update rule to apply instead of a fresh Meta-LSTM, e.g.
            ``MetaLSTMRule.from_checkpoint("runs/x/best.pt")``.

    ``parameters()`` are the module's (``theta_0``) and the rule's weights: what the outer optimizer trains.
    Parameters with ``requires_grad=False`` are not adapted (they stay as they are in every learner).
    """

    def __init__(self, module: nn.Module, hidden_size: int = 20, first_order: bool = True,
                 allow_unused: bool = False, rule: UpdateRule | None = None) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"MetaLSTMAlgorithm: module must be a torch.nn.Module, got {type(module).__name__}")
        if rule is not None and not isinstance(rule, UpdateRule):
            raise TypeError(f"MetaLSTMAlgorithm: rule must be an UpdateRule (fewshot_l2l.optim.rules), got {type(rule).__name__}")
        if not any(p.requires_grad for p in module.parameters()):
            raise ValueError(f"MetaLSTMAlgorithm: module {type(module).__name__} has no trainable parameters to adapt")
        self.module = module
        self.rule = MetaLSTMRule(hidden_size=hidden_size) if rule is None else rule
        self.first_order, self.allow_unused = bool(first_order), bool(allow_unused)

    def forward(self, *args, **kwargs):
        """The wrapped module at ``theta_0``."""
        return self.module(*args, **kwargs)

    def clone(self, first_order: bool | None = None, allow_unused: bool | None = None) -> "MetaLSTMLearner":
        """A learner starting at ``theta_0`` (the module's parameters themselves: gradients reach them)."""
        return MetaLSTMLearner(
            self.module, self.rule,
            self.first_order if first_order is None else first_order,
            self.allow_unused if allow_unused is None else allow_unused,
        )


class MetaLSTMLearner(nn.Module):
    """One task's learner (``MetaLSTMAlgorithm.clone()``): the wrapped module evaluated at adapted parameters.

    Attributes:
        params: ``{name: tensor}`` of the adapted parameters (non-leaf after the first ``adapt``).
        steps: ``adapt`` calls so far.
    """

    def __init__(self, module: nn.Module, rule: UpdateRule, first_order: bool, allow_unused: bool) -> None:
        super().__init__()
        # Held outside nn.Module's registries: the learner owns no parameters of its own, so a learner's
        # .parameters() or .to() never reaches (or copies) theta_0 and the rule.
        object.__setattr__(self, "_module", module)
        object.__setattr__(self, "_rule", rule)
        self.first_order, self.allow_unused = first_order, allow_unused
        self.params: dict[str, Tensor] = {name: p for name, p in module.named_parameters() if p.requires_grad}
        self._state = None  # the rule's recurrent state, [1, P] rows, created at the first adapt
        self.steps = 0

    @property
    def module(self) -> nn.Module:
        """The wrapped module (its own parameters are ``theta_0``, not this learner's)."""
        return self._module

    def forward(self, *args, **kwargs):
        """The wrapped module's forward at the adapted parameters."""
        return functional_call(self._module, self.params, args, kwargs, strict=False)

    def adapt(self, loss: Tensor, first_order: bool | None = None, allow_unused: bool | None = None) -> None:
        """One step of the update rule on every adapted parameter, from ``loss`` (a scalar of this learner's output)."""
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(f"MetaLSTMLearner.adapt: loss must be a scalar tensor, got "
                             f"{tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__}")
        first_order = self.first_order if first_order is None else first_order
        allow_unused = self.allow_unused if allow_unused is None else allow_unused
        second_order = not first_order and torch.is_grad_enabled()
        names, values = list(self.params), list(self.params.values())
        # create_graph only for the full meta-gradient; first order takes the gradient as a constant.
        grads = torch.autograd.grad(loss, values, create_graph=second_order, allow_unused=True)
        unused = [name for name, grad in zip(names, grads) if grad is None]
        if unused and not allow_unused:
            raise ValueError(f"MetaLSTMLearner.adapt: the loss does not depend on parameter(s) {', '.join(unused)}; "
                             "pass allow_unused=True to adapt them with a zero gradient, or freeze them (requires_grad=False)")
        # One flat [1, P] problem, one call of the rule. The concatenation and the split below touch each
        # parameter tensor once (one cat / one split): the tensors are separate, no coordinate is looped over.
        theta = torch.cat([value.reshape(-1) for value in values])[None]
        grad = torch.cat([(torch.zeros_like(v) if g is None else g).reshape(-1) for v, g in zip(values, grads)])[None]
        if not second_order:
            grad, loss = grad.detach(), loss.detach()
        if self._state is None:
            self._state = self._rule.initial_state(theta.detach())
        theta, self._state = self._rule(theta, grad, loss.reshape(1).to(theta.dtype), self._state)
        sizes = [value.numel() for value in values]
        self.params = {name: piece.view_as(value) for name, value, piece in zip(names, values, theta[0].split(sizes))}
        self.steps += 1
