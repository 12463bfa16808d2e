"""Learned optimizers: the meta-learner as a coordinatewise update rule for any ``nn.Module``.

* :mod:`.rules` - the update rules (Meta-LSTM, Andrychowicz et al.'s LSTM optimizer), functional and differentiable;
* :mod:`.optimizer` - :class:`LearnedOptimizer`, a ``torch.optim.Optimizer`` that applies a rule;
* :mod:`.problems` - distributions of optimization problems (random quadratics, an MLP on glyphs);
* :mod:`.training` - meta-training a rule on a problem distribution (truncated BPTT), checkpoints, resume;
* :mod:`.evaluation` - loss curves against tuned SGD / Nesterov / RMSprop / Adam.
"""

from .optimizer import LearnedOptimizer
from .rules import RULES, AndrychowiczRule, MetaLSTMRule, UpdateRule, build_rule

__all__ = ["AndrychowiczRule", "LearnedOptimizer", "MetaLSTMRule", "RULES", "UpdateRule", "build_rule"]
