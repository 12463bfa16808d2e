"""Few-shot methods, every one through the same interface (:class:`.base.FewShotMethod`), loop, episodes, seeds,
checkpoints and evaluation, so that a comparison differs only in the method:

* :mod:`.meta_lstm` - the Meta-LSTM of Ravi & Larochelle (this library's method);
* :mod:`.maml` - MAML, first-order MAML and Meta-SGD (through learn2learn, imported only when used);
* :mod:`.protonet` - Prototypical Networks;
* :mod:`.finetune` - fine-tuning (Chen et al.'s "Baseline").

Each module holds the method and its configuration (the shared groups of :mod:`fewshot_l2l.config` plus its own
settings, its paper's hyper-parameters as defaults, cited there); every method uses the same 4-block CNN
(:class:`fewshot_l2l.learner.ConvLearner`, as a module :class:`.network.ConvNet`). :data:`METHODS` registers them
by name; a new method goes into this registry.
"""

from __future__ import annotations

import torch

from ..config import FewShotConfig
from ..learner import ConvLearner
from .base import FewShotMethod
from .finetune import FineTune
from .maml import MAML, MetaSGD
from .meta_lstm import MetaLSTMMethod
from .protonet import PrototypicalNetwork

METHODS: dict[str, type[FewShotMethod]] = {
    "meta-lstm": MetaLSTMMethod, "maml": MAML, "fomaml": MAML, "metasgd": MetaSGD, "protonet": PrototypicalNetwork,
    "finetune": FineTune,
}


def method_class(name: str) -> type[FewShotMethod]:
    """The method registered as ``name``; ``ValueError`` listing the names for another."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: choose one of {', '.join(METHODS)}")
    return METHODS[name]


def config_class(name: str) -> type[FewShotConfig]:
    """The configuration class of method ``name``."""
    return method_class(name).Config


def method_config(name: str, **settings) -> FewShotConfig:
    """The configuration of a ``name`` run with ``settings`` (the others at the method's defaults)."""
    return config_class(name)(method=name, **settings)


def new_learner(config: FewShotConfig, image_shape: tuple[int, int, int], n_train_classes: int | None = None) -> ConvLearner:
    """The CNN that ``config``'s method trains on images of ``image_shape`` ``(C, H, W)`` (``n_train_classes``:
    the training split's classes, fine-tuning's classifier width; the other methods' classifier is ``n_way`` wide)."""
    channels, height, width = image_shape
    if height != width:
        raise ValueError(f"the learner takes square images, got {height}x{width}")
    return ConvLearner(method_class(config.method).learner_config(config, image_shape, n_train_classes))


def build_method(config: FewShotConfig, learner: ConvLearner, theta: torch.Tensor | None = None) -> FewShotMethod:
    """The method of ``config`` on ``learner``, initialized from ``config.seed`` (the same initial CNN for every
    method) unless ``theta`` is given (e.g. zeros, to load a checkpoint into).

    Leaves the global generators as they were: a method may draw its weights from torch's global CPU generator
    (the Meta-LSTM does), so that one is seeded by ``config.seed`` inside a fork of it.
    """
    cls = method_class(config.method)
    with torch.random.fork_rng(devices=[]):  # CPU only: torch.manual_seed would also reseed CUDA's, unforked
        torch.default_generator.manual_seed(config.seed)
        if theta is None:
            theta = learner.init_params(torch.Generator().manual_seed(config.seed))
        return cls(config, learner, theta)


__all__ = ["METHODS", "FewShotMethod", "build_method", "config_class", "method_class", "method_config", "new_learner"]
