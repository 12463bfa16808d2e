"""Meta-train the Meta-LSTM on N-way K-shot episodes. Thin wrapper over fewshot_l2l.training.

Data-parallel on several processes or machines: torchrun --nproc_per_node=N scripts/train.py ...
(docs/distributed.md)."""

from __future__ import annotations

import argparse
import json

from .. import distributed
from ..adaptation import BATCHED_LEARNER_MODES
from ..data import DATASETS, ROTATE_CHOICES
from ..learner import QUERY_BN_MODES
from ..training import TrainConfig, meta_train
from ..utils import seed_everything, tune_cpu_allocator
from .args import DEVICE_HELP, device_arg


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dataset", default=defaults.dataset, choices=DATASETS)
    parser.add_argument("--data", default=None, help="dataset file (HDF5, fewshot-prepare-data) for omniglot/miniimagenet")
    parser.add_argument("--rotate", default=defaults.rotate, choices=ROTATE_CHOICES,
                        help="splits whose classes get 90/180/270-degree rotated copies as extra classes "
                             "(auto: the file's protocol, e.g. train only for alphabet-disjoint Omniglot)")
    parser.add_argument("--n-way", type=int, default=defaults.n_way)
    parser.add_argument("--k-shot", type=int, default=defaults.k_shot)
    parser.add_argument("--n-query", type=int, default=defaults.n_query, help="query images per class")
    parser.add_argument("--inner-steps", type=int, default=None, help="default: 12 for 1-shot, 8 for 5-shot")
    parser.add_argument("--inner-batch-size", type=int, default=None, help="support images per inner step (default: all)")
    parser.add_argument("--meta-batch", type=int, default=defaults.meta_batch,
                        help="episodes per meta-update (under torchrun: over all ranks, a multiple of the world size)")
    parser.add_argument("--episodes", type=int, default=defaults.episodes, help="meta-training episodes in total")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop after this many minutes of meta-training (validates and checkpoints first)")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="Adam learning rate of the meta-learner")
    parser.add_argument("--grad-clip", type=float, default=defaults.grad_clip, help="global gradient-norm clip")
    parser.add_argument("--hidden-size", type=int, default=defaults.hidden_size, help="meta-learner LSTM units")
    parser.add_argument("--hidden-channels", type=int, default=defaults.hidden_channels, help="learner conv filters")
    parser.add_argument("--second-order", action="store_true", help="keep gradients through the learner's gradient")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the meta-learner step (README 'Speed': measured, off by default)")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast for the learner (for CUDA)")
    parser.add_argument("--batched-learner", default=defaults.batched_learner, choices=BATCHED_LEARNER_MODES,
                        help="run the learner vmapped over the meta-batch (auto: on CUDA; slower on CPU)")
    parser.add_argument("--query-bn", default=defaults.query_bn, choices=QUERY_BN_MODES,
                        help="batch-norm statistics for the query set (batch: transductive, as the authors)")
    parser.add_argument("--val-every", type=int, default=defaults.val_every, help="episodes between validations")
    parser.add_argument("--val-episodes", type=int, default=defaults.val_episodes)
    parser.add_argument("--device", default=defaults.device, type=device_arg,
                        help=DEVICE_HELP + " (under torchrun auto and cuda mean cuda:LOCAL_RANK)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--out", default=defaults.out, help="RUN_DIR for checkpoints and metrics.csv")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt if it exists")
    args = parser.parse_args(argv)
    return TrainConfig(**{key: value for key, value in vars(args).items()})


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    tune_cpu_allocator()
    seed_everything(config.seed)  # nothing in meta_train draws from the global generators; any future use is seeded
    context = distributed.init_process_group(config.device)  # SINGLE (nothing) without torchrun's WORLD_SIZE
    try:
        summary = meta_train(config)
    finally:
        distributed.destroy_process_group()
    if context.is_main:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
