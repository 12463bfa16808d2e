"""fewshot_l2l: few-shot learning with a learned optimizer (Ravi & Larochelle 2017; Andrychowicz et al. 2016).

The core algorithm sits at the top of the package, one module per concept: :mod:`.preprocess` (gradient/loss
preprocessing), :mod:`.meta_learner` (the coordinatewise Meta-LSTM, whose cell state is the learner's parameters),
:mod:`.learner` (the functional 4-block CNN), :mod:`.adaptation` (the inner loop, one episode end to end) and
:mod:`.gates` (what the meta-learner learned). Around it, by concern:

* :mod:`.methods` - every few-shot method behind one interface: the Meta-LSTM, MAML, Meta-SGD, Prototypical
  Networks, fine-tuning;
* :mod:`.settings` and :mod:`.config` - every setting declared once (type, bounds, help), the command lines built
  from the declarations;
* :mod:`.training` (meta-training any method), :mod:`.evaluation` (accuracy ± 95% CI), :mod:`.checkpoints`,
  :mod:`.compare` (every method on the same budget and test episodes);
* :mod:`.runs` - the run folder and the one training loop (signals, clock, non-finite guard, ``torchrun``);
* :mod:`.data` - splits, the episode sampler, the embedded glyphs, the Omniglot / miniImageNet HDF5 files;
* :mod:`.optim` - the meta-learner as a ``torch.optim``-style update rule for any module, and meta-training rules
  on problem distributions;
* :mod:`.interop` - learn2learn; :mod:`.cli` - the command lines.

The speed benchmarks live outside the package, in the repository's ``benchmarks/``.
"""

from .adaptation import InnerLoop, adapt, default_inner_steps, run_episodes
from .checkpoints import load_checkpoint
from .data import Episode, EpisodeSampler, FewShotSplit, load_splits
from .evaluation import EvalResult, evaluate, mean_ci95
from .learner import ConvLearner, LearnerConfig
from .meta_learner import MetaLearner, MetaLSTMState
from .methods import METHODS, FewShotMethod, method_config
from .methods.meta_lstm import MetaLSTMConfig
from .optim import AndrychowiczRule, LearnedOptimizer, MetaLSTMRule, UpdateRule
from .preprocess import preprocess
from .training import meta_train

__all__ = [
    "AndrychowiczRule", "ConvLearner", "Episode", "EpisodeSampler", "EvalResult", "FewShotMethod", "FewShotSplit",
    "InnerLoop", "LearnedOptimizer", "LearnerConfig", "METHODS", "MetaLSTMConfig", "MetaLSTMRule", "MetaLSTMState",
    "MetaLearner", "UpdateRule", "adapt", "default_inner_steps", "evaluate", "load_checkpoint", "load_splits",
    "mean_ci95", "meta_train", "method_config", "preprocess", "run_episodes",
]
