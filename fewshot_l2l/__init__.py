"""fewshot_l2l: few-shot learning with a learned optimizer (Ravi & Larochelle 2017; Andrychowicz et al. 2016).

The core algorithm sits at the top of the package, one module per concept:
:mod:`.preprocess` (gradient/loss preprocessing), :mod:`.meta_learner` (the
coordinatewise Meta-LSTM, whose cell state is the learner's parameters),
:mod:`.learner` (the functional 4-block CNN), :mod:`.adaptation` (one episode end
to end), :mod:`.training` (meta-training) and :mod:`.evaluation` (accuracy ± 95% CI).
Around it: :mod:`.data` (splits, the episode sampler, the embedded glyphs, the
Omniglot / miniImageNet HDF5 files) and :mod:`.optim` (the meta-learner as a
``torch.optim``-style update rule for any module, and its meta-training on
problem distributions). The speed benchmark lives outside the package, in the
repository's ``benchmarks/``.
"""

from .adaptation import adapt, default_inner_steps, run_episodes
from .data import Episode, EpisodeSampler, FewShotSplit, load_splits
from .evaluation import EvalResult, evaluate, mean_ci95
from .learner import ConvLearner, LearnerConfig
from .meta_learner import MetaLearner, MetaLSTMState
from .optim import AndrychowiczRule, LearnedOptimizer, MetaLSTMRule, UpdateRule
from .preprocess import preprocess
from .training import TrainConfig, load_checkpoint, meta_train

__all__ = [
    "AndrychowiczRule", "ConvLearner", "Episode", "EpisodeSampler", "EvalResult", "FewShotSplit", "LearnedOptimizer",
    "LearnerConfig", "MetaLSTMRule", "MetaLSTMState", "MetaLearner", "TrainConfig", "UpdateRule", "adapt",
    "default_inner_steps", "evaluate", "load_checkpoint", "load_splits", "mean_ci95", "meta_train",
    "preprocess", "run_episodes",
]
