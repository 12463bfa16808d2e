"""Train a baseline method (MAML, first-order MAML, Meta-SGD, Prototypical Networks, fine-tuning) on the
Meta-LSTM's episodes: ``scripts/train.py --method METHOD``. Options left out take the method's published
Omniglot settings (fewshot_l2l/baselines/config.py, README "Baselines")."""

from __future__ import annotations

import json

from ..baselines import BASELINES
from ..baselines.config import BaselineConfig
from ..data import DATASETS, ROTATE_CHOICES
from ..learner import EVAL_QUERY_BN, QUERY_BN_MODES
from ..utils import seed_everything, tune_cpu_allocator
from .args import DEVICE_HELP, device_arg, int_at_least, new_parser, positive_float, positive_int, seed_int


def parse_args(argv: list[str] | None = None) -> BaselineConfig:
    defaults = BaselineConfig()
    parser = new_parser(__doc__)
    parser.add_argument("--method", required=True, choices=BASELINES)
    parser.add_argument("--dataset", default=defaults.dataset, choices=DATASETS)
    parser.add_argument("--data", default=None, help="dataset file (HDF5, fewshot-prepare-data) for omniglot/miniimagenet")
    parser.add_argument("--rotate", default=defaults.rotate, choices=ROTATE_CHOICES)
    parser.add_argument("--n-way", type=int_at_least(2), default=defaults.n_way)
    parser.add_argument("--k-shot", type=positive_int, default=defaults.k_shot)
    parser.add_argument("--n-query", type=positive_int, default=defaults.n_query, help="query images per class")
    parser.add_argument("--inner-steps", type=positive_int, default=None, help="maml/fomaml/metasgd: training inner steps")
    parser.add_argument("--test-inner-steps", type=positive_int, default=None, help="the same at validation and test")
    parser.add_argument("--inner-lr", type=positive_float, default=None, help="maml/fomaml: inner SGD learning rate")
    parser.add_argument("--meta-batch", type=positive_int, default=None,
                        help="episodes per update (finetune: images per pre-training mini-batch)")
    parser.add_argument("--lr", type=positive_float, default=None, help="Adam learning rate")
    parser.add_argument("--episodes", type=positive_int, default=defaults.episodes,
                        help="training episodes in total (finetune: pre-training mini-batches)")
    parser.add_argument("--max-minutes", type=positive_float, default=None)
    parser.add_argument("--hidden-channels", type=positive_int, default=defaults.hidden_channels)
    parser.add_argument("--query-bn", default=defaults.query_bn, choices=QUERY_BN_MODES,
                        help="batch-norm statistics of the query set in training")
    parser.add_argument("--val-query-bn", default=EVAL_QUERY_BN, choices=QUERY_BN_MODES, help="the same in validation")
    parser.add_argument("--val-every", type=positive_int, default=defaults.val_every)
    parser.add_argument("--val-episodes", type=positive_int, default=defaults.val_episodes)
    parser.add_argument("--device", default=defaults.device, type=device_arg, help=DEVICE_HELP)
    parser.add_argument("--seed", type=seed_int, default=defaults.seed)
    parser.add_argument("--out", default=defaults.out, help="RUN_DIR for checkpoints and metrics.csv")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt if it exists")
    parser.add_argument("--max-nonfinite", type=positive_int, default=defaults.max_nonfinite)
    args = parser.parse_args(argv)
    try:
        return BaselineConfig(**{key: value for key, value in vars(args).items() if key != "debug"})
    except ValueError as error:
        parser.error(str(error))


def train_main(argv: list[str] | None = None) -> None:
    """``scripts/train.py --method METHOD ...`` for a baseline (errors handled by the caller's ``@command``)."""
    from ..baselines.training import train_baseline  # learn2learn, if the method needs it, only now

    config = parse_args(argv)
    tune_cpu_allocator()
    seed_everything(config.seed)
    print(json.dumps(train_baseline(config)))
