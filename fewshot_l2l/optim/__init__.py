"""Learned optimizers: the meta-learner as a coordinatewise update rule for any ``nn.Module``.

* :mod:`.rules` - the update rules (Meta-LSTM, Andrychowicz et al.'s LSTM optimizer, optionally with global
  averaging cells), functional and differentiable; :mod:`.ntm` - NTM-BFGS; :mod:`.per_type` - a rule per layer type;
* :mod:`.layout` - which coordinates form which parameter tensor (for the rules that look beyond one coordinate);
* :mod:`.optimizer` - :class:`LearnedOptimizer`, a ``torch.optim.Optimizer`` that applies a rule;
* :mod:`.problems` - distributions of optimization problems (random quadratics, MLPs on glyphs), with
  :mod:`.convnet` (a conv-net on glyphs) and :mod:`.neural_art` (style transfer);
* :mod:`.training` - meta-training a rule on a problem distribution (truncated BPTT), checkpoints, resume;
* :mod:`.evaluation` - loss curves against tuned SGD / Nesterov / RMSprop / Adam.
"""

from .layout import ParamLayout
from .ntm import NTMBFGSRule
from .optimizer import LearnedOptimizer
from .per_type import LayerTypeRule
from .rules import RULES, AndrychowiczRule, MetaLSTMRule, UpdateRule, build_rule

__all__ = ["AndrychowiczRule", "LayerTypeRule", "LearnedOptimizer", "MetaLSTMRule", "NTMBFGSRule", "ParamLayout", "RULES",
           "UpdateRule", "build_rule"]
