"""A ``torch.optim.Optimizer`` that applies a learned coordinatewise update rule to any module.

Usage, the ordinary PyTorch loop::

    rule = load_rule_checkpoint("runs/quad/best.pt")[0]      # or MetaLSTMRule.from_checkpoint(...)
    opt = LearnedOptimizer(model.parameters(), rule)
    for x, y in data:
        opt.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        opt.step(loss=loss)      # or opt.step(closure); the Meta-LSTM rule needs the loss

Every step flattens all parameters that have a gradient (all groups, any
shapes) into one vector, calls the rule once on it (``B = 1`` problem,
``P`` = their total size) and writes the result back: one vectorized step,
whatever the number of parameter tensors. The per-coordinate recurrent state
lives in ``self.state[param]`` (one tensor per state field, first dimension =
``param.numel()``), so ``state_dict()`` / ``load_state_dict()`` round-trip it
exactly, and it follows parameters that skip a step. Parameters whose ``grad``
is ``None`` (frozen ones included) are left untouched, state and all.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor

from .rules import UpdateRule


class LearnedOptimizer(torch.optim.Optimizer):
    """Optimizer-style front end of an :class:`~fewshot_l2l.optim.rules.UpdateRule`.

    Args:
        params: parameters or parameter groups, as for any ``torch.optim`` optimizer.
        rule: the learned update rule (its weights are not trained by this optimizer).
        update_scale: multiplies the rule's proposed change ``theta_next - theta``
            (per group; 1.0 applies the rule as learned).
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], rule: UpdateRule, update_scale: float = 1.0) -> None:
        if not isinstance(rule, UpdateRule):
            raise TypeError(f"LearnedOptimizer: rule must be an UpdateRule (fewshot_l2l.optim.rules), got {type(rule).__name__}")
        if update_scale < 0:
            raise ValueError(f"LearnedOptimizer: update_scale must be >= 0, got {update_scale}")
        super().__init__(params, {"update_scale": update_scale})
        self.rule = rule

    def _params_with_grad(self) -> tuple[list[Tensor], list[float]]:
        params, scales = [], []
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise ValueError("LearnedOptimizer: sparse gradients are not supported")
                params.append(param)
                scales.append(group["update_scale"])
        return params, scales

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, loss: Tensor | float | None = None) -> Tensor | float | None:
        """Update every parameter that has a gradient, in one call of the rule.

        Args:
            closure: re-evaluates the model, calls ``backward`` and returns the loss (optional).
            loss: the loss whose gradient is in ``.grad``; required by rules that read
                the loss (``rule.needs_loss``, the Meta-LSTM) unless ``closure`` gives it.

        Returns:
            The loss (from ``closure`` or ``loss``).
        """
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params, scales = self._params_with_grad()
        if not params:
            return loss
        if self.rule.needs_loss and loss is None:
            raise ValueError(
                f"LearnedOptimizer.step: the {type(self.rule).__name__} rule reads the loss; call step(loss=loss) or step(closure)"
            )
        first = params[0]
        for param in params:
            if not self.state[param]:
                fresh = self.rule.initial_state(param.detach().reshape(1, -1))
                self.state[param].update({name: value[0] for name, value in zip(fresh._fields, fresh)})
                self.state[param]["step"] = torch.zeros((), dtype=torch.float32)
        # The rule's own field order (not the stored dicts' key order): fields of equal shape must not swap.
        fields = self.rule.initial_state(first.detach().new_zeros(1, 0))._fields

        theta = torch.cat([param.detach().reshape(-1) for param in params])[None]
        grad = torch.cat([param.grad.reshape(-1) for param in params])[None]
        state = tuple(torch.cat([self.state[param][name] for param in params])[None] for name in fields)
        loss_tensor = None if loss is None else torch.as_tensor(loss, dtype=theta.dtype, device=theta.device).detach().reshape(1)
        theta_next, state_next = self.rule(theta, grad, loss_tensor, state)
        if any(scale != 1.0 for scale in scales):
            numels = torch.tensor([param.numel() for param in params], device=theta.device)
            scale = torch.tensor(scales, dtype=theta.dtype, device=theta.device).repeat_interleave(numels)
            theta_next = theta + scale * (theta_next - theta)

        sizes = [param.numel() for param in params]
        torch._foreach_copy_(params, [value.view_as(param) for value, param in zip(theta_next[0].split(sizes), params)])
        for name, value in zip(fields, state_next):
            for param, piece in zip(params, value[0].split(sizes)):
                self.state[param][name] = piece.clone()  # own storage: a parameter that skips steps keeps only its rows
        for param in params:
            self.state[param]["step"] += 1
        return loss

    def state_dict(self) -> dict:
        """The ``torch.optim`` state (per-coordinate recurrent state, groups) plus the rule's weights."""
        state = super().state_dict()
        state["rule"] = self.rule.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore :meth:`state_dict` output (the rule's weights too, when present)."""
        state_dict = dict(state_dict)
        rule_state = state_dict.pop("rule", None)
        if rule_state is not None:
            self.rule.load_state_dict(rule_state)
        super().load_state_dict(state_dict)
