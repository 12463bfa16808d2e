"""fewshot_l2l: few-shot learning with a learned optimizer (Ravi & Larochelle 2017).

The pieces, one module per concept: :mod:`.meta_learner` (the coordinatewise
Meta-LSTM), :mod:`.learner` (the functional CNN), :mod:`.adaptation` (one
episode end to end), :mod:`.episodes` (splits and the episode sampler),
:mod:`.data` (datasets by name: the embedded glyphs, Omniglot and miniImageNet
HDF5 files), :mod:`.training` and :mod:`.evaluation`; the update-rule API
(:mod:`.update_rules`, :mod:`.optim`) and its meta-training on problem
distributions (:mod:`.optimizees`, :mod:`.optimizer_training`,
:mod:`.optimizer_evaluation`).
"""

from .adaptation import adapt, default_inner_steps, run_episodes
from .episodes import Episode, EpisodeSampler, FewShotSplit
from .evaluation import EvalResult, evaluate, mean_ci95
from .learner import ConvLearner, LearnerConfig
from .meta_learner import MetaLearner, MetaLSTMState
from .optim import LearnedOptimizer
from .preprocess import preprocess
from .update_rules import AndrychowiczRule, MetaLSTMRule, UpdateRule

__all__ = [
    "AndrychowiczRule", "ConvLearner", "Episode", "EpisodeSampler", "EvalResult", "FewShotSplit", "LearnedOptimizer",
    "LearnerConfig", "MetaLSTMRule", "MetaLSTMState", "MetaLearner", "UpdateRule", "adapt", "default_inner_steps",
    "evaluate", "mean_ci95", "preprocess", "run_episodes",
]
