"""Meta-train the Meta-LSTM on N-way K-shot episodes (thin wrapper over fewshot_l2l.training); with --method, a
baseline on the same episodes instead (fewshot_l2l.cli.baseline: `--method maml --help` lists its options).

Data-parallel on several processes or machines: torchrun --nproc_per_node=N scripts/train.py ...
(docs/distributed.md)."""

from __future__ import annotations

import argparse
import json
import math
import os

from .. import distributed
from ..adaptation import BATCHED_LEARNER_MODES
from ..baselines import BASELINES, METHODS
from ..data import DATASETS, ROTATE_CHOICES
from ..kernels import STEP_KERNELS
from ..learner import QUERY_BN_MODES
from ..process import RunInterrupted
from ..training import AUTHORS_CONFIG, LR_SCHEDULES, TrainConfig, authors_config, meta_train
from ..utils import seed_everything, tune_cpu_allocator
from .baseline import train_main as train_baseline_main
from .args import DEVICE_HELP, command, device_arg, int_at_least, new_parser, positive_float, positive_int, seed_int, warn


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    defaults = TrainConfig()
    parser = new_parser(__doc__)
    parser.add_argument("--method", default="meta-lstm", choices=METHODS,
                        help="meta-lstm (ours, these options) or a baseline: --method maml --help lists its options")
    parser.add_argument("--dataset", default=defaults.dataset, choices=DATASETS)
    parser.add_argument("--data", default=None, help="dataset file (HDF5, fewshot-prepare-data) for omniglot/miniimagenet")
    parser.add_argument("--rotate", default=defaults.rotate, choices=ROTATE_CHOICES,
                        help="splits whose classes get 90/180/270-degree rotated copies as extra classes "
                             "(auto: the file's protocol, e.g. train only for alphabet-disjoint Omniglot)")
    parser.add_argument("--n-way", type=int_at_least(2), default=defaults.n_way)
    parser.add_argument("--k-shot", type=positive_int, default=defaults.k_shot)
    parser.add_argument("--n-query", type=positive_int, default=defaults.n_query, help="query images per class")
    parser.add_argument("--inner-steps", type=positive_int, default=None, help="default: 12 for 1-shot, 8 for 5-shot")
    parser.add_argument("--inner-batch-size", type=positive_int, default=None,
                        help="support images per inner step (default: all)")
    parser.add_argument("--meta-batch", type=positive_int, default=defaults.meta_batch,
                        help="episodes per meta-update (under torchrun: over all ranks, a multiple of the world size)")
    parser.add_argument("--episodes", type=positive_int, default=defaults.episodes,
                        help="meta-training episodes in total (rounded up to whole meta-batches, with a warning)")
    parser.add_argument("--max-minutes", type=positive_float, default=None,
                        help="stop after this many minutes of meta-training (validates and checkpoints first)")
    parser.add_argument("--lr", type=positive_float, default=defaults.lr, help="Adam learning rate of the meta-learner")
    parser.add_argument("--lr-schedule", default=defaults.lr_schedule, choices=LR_SCHEDULES,
                        help="cosine: anneal --lr to 0 over the run (progress: the larger of the shares of --episodes done and of --max-minutes spent)")
    parser.add_argument("--grad-clip", type=positive_float, default=defaults.grad_clip, help="global gradient-norm clip")
    parser.add_argument("--hidden-size", type=positive_int, default=defaults.hidden_size, help="meta-learner LSTM units")
    parser.add_argument("--hidden-channels", type=positive_int, default=defaults.hidden_channels, help="learner conv filters")
    parser.add_argument("--second-order", action="store_true", help="keep gradients through the learner's gradient")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the meta-learner step (README 'Speed': measured, off by default)")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast for the learner (for CUDA)")
    parser.add_argument("--batched-learner", default=defaults.batched_learner, choices=BATCHED_LEARNER_MODES,
                        help="run the learner vmapped over the meta-batch (auto: on CUDA; slower on CPU)")
    parser.add_argument("--step-kernel", default=defaults.step_kernel, choices=STEP_KERNELS,
                        help="the meta-learner step: fused C++/Triton kernel (auto: where built and applicable) or plain torch")
    parser.add_argument("--query-bn", default=defaults.query_bn, choices=QUERY_BN_MODES,
                        help="batch-norm statistics for the query set in meta-training (batch: transductive, as the authors)")
    parser.add_argument("--val-query-bn", default=defaults.val_query_bn, choices=QUERY_BN_MODES,
                        help="the same for validation (support: not transductive, the evaluation default)")
    parser.add_argument("--authors-config", action="store_true",
                        help="the authors' released configuration where ours differs (overrides those settings): "
                             + ", ".join(f"{key}={value}" for key, value in AUTHORS_CONFIG.items()))
    parser.add_argument("--val-every", type=positive_int, default=defaults.val_every,
                        help="episodes between validations (rounded to whole meta-batches, with a warning)")
    parser.add_argument("--val-episodes", type=positive_int, default=defaults.val_episodes)
    parser.add_argument("--device", default=defaults.device, type=device_arg,
                        help=DEVICE_HELP + " (under torchrun auto and cuda mean cuda:LOCAL_RANK)")
    parser.add_argument("--seed", type=seed_int, default=defaults.seed)
    parser.add_argument("--out", default=defaults.out, help="RUN_DIR for checkpoints and metrics.csv")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt if it exists")
    parser.add_argument("--max-nonfinite", type=positive_int, default=defaults.max_nonfinite,
                        help="stop after this many meta-updates in a row skipped for a NaN/inf meta-loss or gradient")
    args = parser.parse_args(argv)
    try:
        config = TrainConfig(**{key: value for key, value in vars(args).items() if key not in ("debug", "authors_config", "method")})
        return authors_config(config) if args.authors_config else config
    except ValueError as error:  # a combination the configuration refuses: a usage error too
        parser.error(str(error))


def method_of(argv: list[str] | None) -> str:
    """The ``--method`` of ``argv`` (``meta-lstm`` without one); the full parser checks its value."""
    method = argparse.ArgumentParser(add_help=False)
    method.add_argument("--method", default="meta-lstm")
    return method.parse_known_args(argv)[0].method


def warn_rounding(config: TrainConfig) -> None:
    """Say so when ``--episodes`` / ``--val-every`` are not whole meta-batches: the loop counts meta-updates.

    The numbers are the loop's (:func:`fewshot_l2l.training.meta_train`): ``ceil(episodes / meta_batch)``
    updates, a validation every ``max(1, round(val_every / meta_batch))`` updates.
    """
    batch = config.meta_batch
    updates = math.ceil(config.episodes / batch)
    if updates * batch != config.episodes:
        warn(f"--episodes {config.episodes} is not a multiple of --meta-batch {batch}: "
             f"meta-training runs {updates * batch} episodes ({updates} meta-batches)")
    val_updates = max(1, round(config.val_every / batch))
    if val_updates * batch != config.val_every:
        warn(f"--val-every {config.val_every} is not a multiple of --meta-batch {batch}: "
             f"validating every {val_updates * batch} episodes ({val_updates} meta-batches)")


@command
def main(argv: list[str] | None = None) -> None:
    method = method_of(argv)
    if method in BASELINES:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError(f"--method {method}: the baselines train in one process; data-parallel training under "
                             "torchrun is for the Meta-LSTM (docs/distributed.md)")
        return train_baseline_main(argv)
    config = parse_args(argv)
    warn_rounding(config)
    tune_cpu_allocator()
    seed_everything(config.seed)  # nothing in meta_train draws from the global generators; any future use is seeded
    context = distributed.init_process_group(config.device)  # SINGLE (nothing) without torchrun's WORLD_SIZE
    clean_exit = False
    try:
        summary = meta_train(config)
        clean_exit = True
    except RunInterrupted:
        clean_exit = True  # a stop that every rank took at the same update (SIGTERM, time budget)
        raise
    finally:
        distributed.destroy_process_group(clean_exit)
    if context.is_main:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
