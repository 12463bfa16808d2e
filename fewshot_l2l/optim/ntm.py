"""NTM-BFGS: the LSTM optimizer with GAC as the controller of an external memory shared by all coordinates.

Source: Andrychowicz et al. (2016), appendix "NTM-BFGS optimizer" (and its
figure of the read and write operations). The paper describes the design in
words: a coordinatewise controller (the LSTM with global averaging cells)
emits, for every coordinate, read heads and write vectors; the memory is one
matrix shared by all coordinates, written by outer products of the write
vectors and read by multiplying it with the read heads. The analogy is with
(L-)BFGS, whose inverse-Hessian estimate ``H`` is built from rank-one/two
outer-product updates and applied to the gradient (``d = -H g``). The paper
gives no equations, sizes or normalizations; these are the ones implemented
(our choices marked *):

For problem ``b`` with ``P`` coordinates, memory ``M_t`` ``[K, K]``, ``M_0 = 0``;
for every coordinate ``i`` at step ``t``::

    x_t^i            = [preprocess(g_t^i), rho_{t-1}^i]           (controller input: gradient + last reads *)
    h1, c1, h2, c2   = LSTM-with-GAC(x_t^i, state^i)                (AndrychowiczRule.controller)
    a_t^i, w_t^i     = tanh(W_a h2^i + b_a), tanh(W_w h2^i + b_w)   (write vectors, [K] each; tanh bounds them *)
    M_t              = sigmoid(beta) M_{t-1} + (1/P) sum_i a_t^i (w_t^i)^T
                                                                    (outer-product write, rank <= min(K, P);
                                                                     mean over coordinates and learned decay beta,
                                                                     the "limited" of L-BFGS *)
    q_t^{i,r}        = W_q^r h2^i + b_q^r                           (read heads r = 1..R, [K] each)
    rho_t^{i,r}      = M_t q_t^{i,r}                                (read, after this step's write *)
    theta_t^i        = theta_{t-1}^i + output_scale * (W_o [h2^i, rho_t^i] + b_o)

So ``rho^i = sum_t sum_j (1/P) a^j (w^j . q^i)`` (decayed): a low-rank linear
operator over all coordinates applied to what they wrote, the role ``H`` plays
in BFGS. The memory is per problem (shape ``[B, K, K]``, a shared state
field: :class:`~fewshot_l2l.optim.LearnedOptimizer` keeps one copy per model).
Everything is batched over ``[B, P]``; the write and read are two ``einsum``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..preprocess import preprocess
from .layout import ParamLayout
from .rules import AndrychowiczRule, _check_step_inputs


class NTMBFGSState(NamedTuple):
    """LSTM states ``[B, P, hidden]``, the last reads ``[B, P, R * K]`` and the shared memory ``[B, K, K]``."""

    h1: Tensor
    c1: Tensor
    h2: Tensor
    c2: Tensor
    read: Tensor
    memory: Tensor


def memory_write(memory: Tensor, keep: Tensor, a: Tensor, w: Tensor) -> Tensor:
    """``keep * M + (1/P) sum_i a_i w_i^T``: ``memory`` ``[B, K, K]``, ``a``/``w`` ``[B, P, K]``, ``keep`` a scalar."""
    return keep * memory + torch.einsum("bpi,bpj->bij", a, w) / a.shape[1]


def memory_read(memory: Tensor, heads: Tensor) -> Tensor:
    """``M q`` for every coordinate and head: ``memory`` ``[B, K, K]``, ``heads`` ``[B, P, R, K]`` -> ``[B, P, R, K]``."""
    return torch.einsum("bij,bprj->bpri", memory, heads)


class NTMBFGSRule(AndrychowiczRule):
    """The NTM-BFGS optimizer (equations in the module docstring).

    Args:
        hidden_size, p, output_scale, gac_cells, gac_scope: the controller, as :class:`AndrychowiczRule`.
        memory_size: ``K``, the memory is ``K x K``.
        read_heads: ``R``, read heads per coordinate.
        memory_decay: initial ``sigmoid(beta)``, the fraction of the memory kept at each step (in (0, 1)).
    """

    coordinatewise = False
    shared_fields = ("memory",)

    def __init__(self, hidden_size: int = 20, p: float = 10.0, output_scale: float = 0.1, gac_cells: int = 5,
                 gac_scope: str = "tensor", memory_size: int = 8, read_heads: int = 1, memory_decay: float = 0.9) -> None:
        if memory_size < 1 or read_heads < 1:
            raise ValueError(f"NTMBFGSRule: memory_size and read_heads must be >= 1, got {memory_size}, {read_heads}")
        if not 0 < memory_decay < 1:
            raise ValueError(f"NTMBFGSRule: memory_decay must be in (0, 1), got {memory_decay}")
        reads = memory_size * read_heads
        super().__init__(hidden_size, p, output_scale, gac_cells, gac_scope, input_size=2 + reads)
        self.coordinatewise = False  # the memory couples all coordinates, with or without GAC
        self.memory_size, self.read_heads, self.memory_decay = memory_size, read_heads, memory_decay
        self.write_heads = nn.Linear(hidden_size, 2 * memory_size)  # a and w
        self.read_keys = nn.Linear(hidden_size, reads)
        self.output = nn.Linear(hidden_size + reads, 1)
        initial = torch.tensor(memory_decay)
        self.decay_logit = nn.Parameter(torch.log(initial / (1 - initial)))

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "ntm-bfgs"

    def initial_state(self, theta: Tensor) -> NTMBFGSState:
        zeros = theta.new_zeros(*theta.shape, self.hidden_size)
        reads = theta.new_zeros(*theta.shape, self.memory_size * self.read_heads)
        memory = theta.new_zeros(theta.shape[0], self.memory_size, self.memory_size)
        return NTMBFGSState(zeros, zeros, zeros, zeros, reads, memory)

    def forward(self, theta: Tensor, grad: Tensor, loss: Tensor | None, state: NTMBFGSState,
                layout: ParamLayout | None = None) -> tuple[Tensor, NTMBFGSState]:
        _check_step_inputs("NTMBFGSRule", theta, grad, loss)
        if layout is not None:
            layout.check("NTMBFGSRule", theta.shape[1])
        h1, c1, h2, c2, read, memory = state
        controller = self.controller(torch.cat((preprocess(grad, self.p), read), dim=-1), (h1, c1, h2, c2), layout)
        a, w = torch.tanh(self.write_heads(controller.h2)).chunk(2, dim=-1)
        memory = memory_write(memory, torch.sigmoid(self.decay_logit), a, w)
        heads = self.read_keys(controller.h2).view(*theta.shape, self.read_heads, self.memory_size)
        read = memory_read(memory, heads).flatten(2)
        update = self.output(torch.cat((controller.h2, read), dim=-1)).view(theta.shape) * self.output_scale
        return theta + update, NTMBFGSState(*controller, read, memory)

    def config(self) -> dict:
        return {"rule": self.kind, "hidden_size": self.hidden_size, "p": self.p, "output_scale": self.output_scale,
                "gac_cells": self.gac_cells, "gac_scope": self.gac_scope, "memory_size": self.memory_size,
                "read_heads": self.read_heads, "memory_decay": self.memory_decay}
