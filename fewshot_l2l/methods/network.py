"""The project's learner CNN as an ``nn.Module`` whose parameters are its own, for methods that need a module.

:class:`ConvNet` holds one ``nn.Parameter`` per piece of :class:`fewshot_l2l.learner.ConvLearner`'s flat vector
and its forward is that functional learner on them, so the architecture is literally the Meta-LSTM's learner.
learn2learn's ``clone()`` / ``adapt()`` replace the entries of ``_parameters`` by updated tensors; the forward
reads them from there on every call, so the adapted values are the ones used.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..learner import EVAL_QUERY_BN, ConvLearner


class ConvNet(nn.Module):
    """The functional learner on parameters of its own.

    Args:
        learner: the architecture.
        theta: its initial flat parameters ``[P]`` (e.g. ``learner.init_params(generator)``), copied.
    """

    def __init__(self, learner: ConvLearner, theta: Tensor) -> None:
        super().__init__()
        self.learner = learner
        self.names = [name.replace(".", "_") for name, _ in learner.param_shapes]
        for name, piece in zip(self.names, learner.unflatten(theta)):
            self.register_parameter(name, nn.Parameter(piece.detach().clone()))

    def theta(self) -> Tensor:
        """The flat parameter vector ``[P]`` (differentiable in the parameters, adapted or not)."""
        return torch.cat([self._parameters[name].reshape(-1) for name in self.names])

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``[N, n_way]`` with batch statistics (:meth:`ConvLearner.logits`)."""
        return self.learner.logits(self.theta(), images)

    def query_logits(self, support: Tensor, query: Tensor, query_bn: str = EVAL_QUERY_BN) -> Tensor:
        """Logits of the query set, normalized as ``query_bn`` says (:meth:`ConvLearner.query_logits`)."""
        return self.learner.query_logits(self.theta(), support, query, query_bn)

    def query_embedding(self, support: Tensor, query: Tensor, query_bn: str = EVAL_QUERY_BN) -> tuple[Tensor, Tensor]:
        """Features of the support and query sets (:meth:`ConvLearner.query_embedding`)."""
        return self.learner.query_embedding(self.theta(), support, query, query_bn)
