"""Learned optimizers: the meta-learner as a coordinatewise update rule for any ``nn.Module``.

* :mod:`.rules` - the update rules (Meta-LSTM, Andrychowicz et al.'s LSTM optimizer, optionally with global
  averaging cells), functional and differentiable; :mod:`.ntm` - NTM-BFGS; :mod:`.per_type` - a rule per layer type;
* :mod:`.layout` - which coordinates form which parameter tensor (for the rules that look beyond one coordinate);
* :mod:`.optimizer` - :class:`LearnedOptimizer`, a ``torch.optim.Optimizer`` that applies a rule;
* :mod:`.problems` - distributions of optimization problems (random quadratics, MLPs on glyphs), with
  :mod:`.convnet` (a conv-net on glyphs) and :mod:`.neural_art` (style transfer);
* :mod:`.rule_training` - meta-training a rule on a problem distribution (truncated BPTT) on the package's one loop;
* :mod:`.comparison` - loss curves against tuned SGD / Nesterov / RMSprop / Adam (the baselines of a learned optimizer).

The registries of rules (:func:`build_rule`) and problems (:func:`make_problems`) are here, above every module they
name, so that no module imports another lazily.
"""

import torch

from .convnet import ConvNetProblems
from .layout import ParamLayout
from .neural_art import NeuralArtProblems
from .ntm import NTMBFGSRule
from .optimizer import LearnedOptimizer
from .per_type import LayerTypeRule
from .problems import MLPProblems, QuadraticProblems
from .rules import AndrychowiczRule, MetaLSTMRule, UpdateRule

RULES = ("andrychowicz", "andrychowicz-gac", "ntm-bfgs", "meta-lstm")
PROBLEM_CLASSES = {"quadratic": QuadraticProblems, "mlp": MLPProblems, "convnet": ConvNetProblems,
                   "neural-art": NeuralArtProblems}
PROBLEMS = tuple(PROBLEM_CLASSES)


def build_rule(config: dict) -> UpdateRule:
    """A fresh rule from :meth:`UpdateRule.config` output (``{"rule": name, **arguments}``)."""
    values = dict(config)
    name = values.pop("rule", None)
    if name == "andrychowicz":
        if values.get("gac_cells", 0):
            raise ValueError("build_rule: the andrychowicz rule has no global averaging cells; use andrychowicz-gac")
        return AndrychowiczRule(**values)
    if name == "andrychowicz-gac":
        if values.get("gac_cells", 0) < 1:
            raise ValueError(f"build_rule: andrychowicz-gac needs gac_cells >= 1, got {values.get('gac_cells', 0)}")
        return AndrychowiczRule(**values)
    if name == "ntm-bfgs":
        return NTMBFGSRule(**values)
    if name == "meta-lstm":
        return MetaLSTMRule(hidden_size=values.get("hidden_size", 20))
    if name == LayerTypeRule.kind:
        return LayerTypeRule({kind: build_rule(sub) for kind, sub in values.items()})
    raise ValueError(f"build_rule: unknown rule {name!r}; choose one of {', '.join(RULES)} (or {LayerTypeRule.kind})")


def make_problems(name: str, device: str | torch.device = "cpu", **options):
    """The problem distribution called ``name`` (one of :data:`PROBLEMS`) with its paper settings, or ``options``
    (keyword arguments of its class, e.g. ``hidden=40, layers=2, activation="relu"`` for ``mlp``)."""
    if name not in PROBLEM_CLASSES:
        raise ValueError(f"make_problems: unknown problem {name!r}; choose one of {', '.join(PROBLEMS)}")
    try:
        return PROBLEM_CLASSES[name](device=device, **options)
    except TypeError as error:
        raise ValueError(f"make_problems: {name} takes no option(s) {sorted(options)}: {error}") from error


__all__ = ["AndrychowiczRule", "LayerTypeRule", "LearnedOptimizer", "MetaLSTMRule", "NTMBFGSRule", "PROBLEMS", "ParamLayout",
           "RULES", "UpdateRule", "build_rule", "make_problems"]
