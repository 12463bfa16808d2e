"""A separate learned rule per layer type, as Andrychowicz et al. (2016) used for convolutional networks.

Their CIFAR experiments train "one LSTM for the fully-connected layers and
another for the convolutional layers" (section 3.3); :class:`LayerTypeRule`
does this for any rules: the coordinates of the tensors of type ``kind``
(from the :class:`~fewshot_l2l.optim.layout.ParamLayout`) are gathered, stepped
by ``rules[kind]`` with the layout of those tensors alone, and scattered back.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layout import LAYER_TYPES, ParamLayout
from .rules import UpdateRule


class LayerTypeRule(UpdateRule):
    """``rules[kind]`` for the coordinates of the tensors of layer type ``kind``.

    Args:
        rules: one rule per layer type (keys from :data:`~fewshot_l2l.optim.layout.LAYER_TYPES`);
            all must have the same state fields with the same per-coordinate shapes (e.g. two
            rules of one kind and size), so that their states form one ``[B, P, ...]`` state.
    """

    kind = "per-layer-type"
    coordinatewise = False  # needs the layout to know which coordinate is which type

    def __init__(self, rules: dict[str, UpdateRule]) -> None:
        super().__init__()
        if not rules or any(kind not in LAYER_TYPES for kind in rules):
            raise ValueError(f"LayerTypeRule: rules must map layer types {LAYER_TYPES} to rules, got {sorted(rules)}")
        probes = {}
        for kind, rule in rules.items():
            if not isinstance(rule, UpdateRule) or rule.shared_fields:
                raise ValueError(f"LayerTypeRule: rules[{kind!r}] must be an UpdateRule without shared state fields")
            state = rule.initial_state(torch.zeros(1, 1))
            probes[kind] = (getattr(state, "_fields", None), tuple(s.shape for s in state))
        if len(set(probes.values())) > 1:
            raise ValueError(f"LayerTypeRule: the rules' states differ ({probes}); use rules of one kind and size")
        self.rules = nn.ModuleDict(rules)
        self.needs_loss = any(rule.needs_loss for rule in rules.values())

    def initial_state(self, theta: Tensor) -> tuple[Tensor, ...]:
        return next(iter(self.rules.values())).initial_state(theta)

    def forward(self, theta: Tensor, grad: Tensor, loss: Tensor | None, state: tuple[Tensor, ...],
                layout: ParamLayout | None = None) -> tuple[Tensor, tuple[Tensor, ...]]:
        if layout is None:
            raise ValueError("LayerTypeRule: needs the layout (ParamLayout) saying which coordinates are conv / fc")
        layout.check("LayerTypeRule", theta.shape[1])
        missing = set(layout.kinds) - set(self.rules)
        if missing:
            raise ValueError(f"LayerTypeRule: no rule for layer type(s) {sorted(missing)}; it has {sorted(self.rules)}")
        theta_next, state_next = theta, tuple(state)
        for kind in dict.fromkeys(layout.kinds):  # at most two layer types: not a loop over coordinates
            index = layout.kind_index(kind, theta.device)
            part, part_state = self.rules[kind](theta.index_select(1, index), grad.index_select(1, index), loss,
                                                type(state)(*(s.index_select(1, index) for s in state))
                                                if hasattr(state, "_fields") else tuple(s.index_select(1, index) for s in state),
                                                layout.select(kind))
            theta_next = theta_next.index_copy(1, index, part)
            state_next = tuple(whole.index_copy(1, index, piece) for whole, piece in zip(state_next, part_state))
        return theta_next, type(state)(*state_next) if hasattr(state, "_fields") else state_next

    def config(self) -> dict:
        return {"rule": self.kind, **{kind: rule.config() for kind, rule in self.rules.items()}}
