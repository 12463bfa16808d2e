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

The state is not copied from step to step: each parameter's entries are views
of the rule's output for all of them (coordinates last in memory, the layout the
fused kernels of :mod:`fewshot_l2l.kernels` read), and the next step hands that
output back to the rule when every entry is still such a view; otherwise (a new
set of parameters, a loaded state dict) the entries are concatenated once. A
parameter that skips a step gets its own copy of its rows.

Each parameter group's ``lr`` scales the rule's proposed change: the step is
``theta + lr * (rule(theta) - theta)``, so ``lr=1.0`` (the default) applies the
rule as learned and ``lr=0`` holds the group's parameters still (their rule
state still advances). Being the groups' ``lr`` field, it is what every
``torch.optim.lr_scheduler`` schedules (StepLR, CosineAnnealingLR, OneCycleLR
with ``cycle_momentum=False``: there is no momentum to cycle), e.g. to anneal a
learned rule's steps at the end of a run.

Rules that look beyond one coordinate get the layout of the stepped tensors
(:class:`~fewshot_l2l.optim.layout.ParamLayout`: their sizes, and each one's layer
type, the group key ``layer_type`` - ``"conv"`` or ``"fc"`` - or, where a group does
not say, ``"conv"`` for 4-d tensors and ``"fc"`` otherwise). A rule's shared state
fields (one tensor per model, e.g. the NTM-BFGS memory) live in the state of the
first parameter of the first group, under ``"shared:<field>"``, as
``torch.optim.LBFGS`` keeps its global state.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor

from .layout import LAYER_TYPES, ParamLayout
from .rules import UpdateRule


class LearnedOptimizer(torch.optim.Optimizer):
    """Optimizer-style front end of an :class:`~fewshot_l2l.optim.rules.UpdateRule`.

    Args:
        params: parameters or parameter groups, as for any ``torch.optim`` optimizer.
        rule: the learned update rule (its weights are not trained by this optimizer).
        lr: multiplies the rule's proposed change ``theta_next - theta`` (per group, the field
            learning-rate schedulers act on; 1.0 applies the rule as learned).
        step_kernel: ``"auto"``, ``"fused"`` or ``"torch"``: how the rule's step runs (it sets
            ``rule.step_kernel``, :attr:`~fewshot_l2l.optim.rules.UpdateRule.step_kernel`); ``None`` (default)
            keeps the rule's own setting, ``"auto"`` unless changed: the fused kernel of
            :mod:`fewshot_l2l.kernels` for the Meta-LSTM and the plain LSTM rule, the plain step for the others.

    ``update_scale``, this field's former name, is refused with a message saying
    so (as an argument and as a group key); optimizer state dicts saved under that
    name still load.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], rule: UpdateRule, lr: float = 1.0,
                 step_kernel: str | None = None, **removed) -> None:
        if not isinstance(rule, UpdateRule):
            raise TypeError(f"LearnedOptimizer: rule must be an UpdateRule (fewshot_l2l.optim.rules), got {type(rule).__name__}")
        if "update_scale" in removed:
            raise TypeError(f"LearnedOptimizer: update_scale was renamed lr {_RENAMED}")
        if removed:
            raise TypeError(f"LearnedOptimizer: unexpected keyword argument(s) {', '.join(sorted(removed))}")
        _check_lr(lr)
        super().__init__(params, {"lr": lr})
        self.rule = rule
        if step_kernel is not None:
            rule.step_kernel = step_kernel

    def add_param_group(self, param_group: dict) -> None:
        """``torch.optim.Optimizer.add_param_group``, refusing the removed ``update_scale`` key and a negative ``lr``."""
        if "update_scale" in param_group:
            raise ValueError(f"LearnedOptimizer: parameter group key update_scale was renamed lr {_RENAMED}")
        if "lr" in param_group:
            _check_lr(param_group["lr"])
        if param_group.get("layer_type", "fc") not in LAYER_TYPES:
            raise ValueError(f"LearnedOptimizer: parameter group key layer_type must be one of {LAYER_TYPES}, "
                             f"got {param_group['layer_type']!r}")
        super().add_param_group(param_group)

    def _params_with_grad(self) -> tuple[list[Tensor], list[float], list[str]]:
        params, lrs, kinds = [], [], []
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise ValueError("LearnedOptimizer: sparse gradients are not supported")
                params.append(param)
                lrs.append(group["lr"])
                kinds.append(group.get("layer_type", "conv" if param.dim() == 4 else "fc"))
        return params, lrs, kinds

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
        params, lrs, kinds = self._params_with_grad()
        if not params:
            return loss
        if self.rule.needs_loss and loss is None:
            raise ValueError(
                f"LearnedOptimizer.step: the {type(self.rule).__name__} rule reads the loss; call step(loss=loss) or step(closure)"
            )
        first = params[0]
        shared = self.rule.shared_fields
        anchor = self.state[self.param_groups[0]["params"][0]] if shared else None
        for param in params:
            if "step" not in self.state[param]:  # (the anchor may hold only shared fields)
                fresh = self.rule.initial_state(param.detach().reshape(1, -1))
                self.state[param].update({name: value[0] for name, value in zip(fresh._fields, fresh) if name not in shared})
                self.state[param]["step"] = torch.zeros((), dtype=torch.float32)
        # The rule's own field order (not the stored dicts' key order): fields of equal shape must not swap.
        blank = self.rule.initial_state(first.detach().new_zeros(1, 0))
        fields = blank._fields
        for name, value in zip(fields, blank):
            if name in shared and "shared:" + name not in anchor:
                anchor["shared:" + name] = value[0].clone()

        theta = torch.cat([param.detach().reshape(-1) for param in params])[None]
        grad = torch.cat([param.grad.reshape(-1) for param in params])[None]
        state = tuple(anchor["shared:" + name][None] if name in shared else self._gathered(params, name)[None]
                      for name in fields)
        loss_tensor = None if loss is None else torch.as_tensor(loss, dtype=theta.dtype, device=theta.device).detach().reshape(1)
        sizes = [param.numel() for param in params]
        theta_next, state_next = self.rule(theta, grad, loss_tensor, state, layout=ParamLayout(tuple(sizes), tuple(kinds)))
        if any(lr != 1.0 for lr in lrs):  # skipped at 1.0: theta + 1 * (x - theta) may round differently from x
            lr = torch.tensor([float(lr) for lr in lrs], dtype=theta.dtype, device=theta.device)
            theta_next = theta + lr.repeat_interleave(torch.tensor(sizes, device=theta.device)) * (theta_next - theta)

        # One copy_ per parameter tensor (public API; a model has tens of tensors, not a loop over coordinates):
        # in place, so parameters keep their storage (views, weight tying, other optimizers' references).
        for param, value in zip(params, theta_next[0].split(sizes)):
            param.copy_(value.view_as(param))
        # Per state field, the last step's output of the rule [P, ...], its per-parameter views and their parameters
        # (an attribute torch.optim's __getstate__ leaves out: a copy starts without it).
        previous, self._last_step = getattr(self, "_last_step", {}), {}
        for name, value in zip(fields, state_next):
            if name in shared:
                anchor["shared:" + name] = value[0].clone()
                continue
            pieces = value[0].split(sizes)
            for param, piece in zip(params, pieces):
                self.state[param][name] = piece  # a view of the rule's output: no copy (module docstring)
            self._last_step[name] = (value[0], pieces, params)
        stepped = set(map(id, params))
        for name, (_, views, last_params) in previous.items():  # skipped this step: own rows, so the old output can go
            for param, view in zip(last_params, views):
                if id(param) not in stepped and self.state[param].get(name) is view:
                    self.state[param][name] = view.clone()
        for param in params:
            self.state[param]["step"] += 1
        return loss

    def _gathered(self, params: list[Tensor], name: str) -> Tensor:
        """State field ``name`` of ``params`` as one ``[P, ...]`` tensor: the last step's output itself when every
        entry is still the view of it that step stored, else the entries concatenated, coordinates last in memory."""
        last = getattr(self, "_last_step", {}).get(name)
        if last is not None and len(last[1]) == len(params) and all(
                self.state[param][name] is view for param, view in zip(params, last[1])):
            return last[0]  # the same parameters in the same order: the views' layout is the concatenation
        return torch.cat([self.state[param][name].movedim(0, -1) for param in params], dim=-1).movedim(-1, 0)

    def state_dict(self) -> dict:
        """The ``torch.optim`` state (per-coordinate recurrent state, groups) plus the rule's weights."""
        state = super().state_dict()
        state["rule"] = self.rule.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore :meth:`state_dict` output (the rule's weights too, when present)."""
        state_dict = dict(state_dict)
        # Saved before update_scale was renamed lr: same meaning, new name.
        state_dict["param_groups"] = [
            {("lr" if key == "update_scale" else key): value for key, value in group.items()}
            for group in state_dict["param_groups"]
        ]
        rule_state = state_dict.pop("rule", None)
        if rule_state is not None:
            self.rule.load_state_dict(rule_state)
        super().load_state_dict(state_dict)


_RENAMED = "(the scale of the rule's proposed change, which torch.optim.lr_scheduler schedulers act on): pass lr=..."


def _check_lr(lr: float) -> None:
    if not lr >= 0:
        raise ValueError(f"LearnedOptimizer: lr (the scale of the rule's proposed change) must be >= 0, got {lr}")
