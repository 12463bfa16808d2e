"""Meta-train a few-shot method on N-way K-shot episodes (thin wrapper over fewshot_l2l.training): the Meta-LSTM by
default, or with --method another method on the same episodes (`--method maml --help` lists its options, its paper's
settings as defaults).

Data-parallel on several processes or machines, for every method: torchrun --nproc_per_node=N scripts/train.py ...
(docs/distributed.md)."""

from __future__ import annotations

import argparse
import json
import math

from ..config import FewShotConfig
from ..devices import seed_everything, tune_cpu_allocator
from ..methods import METHODS, config_class, method_class
from ..runs import distributed
from ..runs.process import RunInterrupted
from .options import add_arguments, config_from_arguments
from ..training import meta_train
from .args import command, new_parser, warn


def method_of(argv: list[str] | None) -> str:
    """The ``--method`` of ``argv`` (``meta-lstm`` without one); the full parser checks its value."""
    method = argparse.ArgumentParser(add_help=False)
    method.add_argument("--method", default="meta-lstm")
    return method.parse_known_args(argv)[0].method


def parse_args(argv: list[str] | None = None) -> FewShotConfig:
    """The configuration of ``--method``'s run: its options are built from the declarations of its settings."""
    method = method_of(argv)
    parser = new_parser(__doc__)
    parser.add_argument("--method", default="meta-lstm", choices=tuple(METHODS),
                        help="the few-shot method (meta-lstm: ours); --method NAME --help lists that method's options")
    if method not in METHODS:
        parser.parse_args(argv)  # the usage error naming the choices
    cls = config_class(method)
    add_arguments(parser, cls)
    for preset, (help_text, _) in cls.PRESETS.items():  # e.g. the Meta-LSTM's --authors-config
        parser.add_argument(f"--{preset}", dest=f"preset_{preset}", action="store_true", help=help_text)
    args = parser.parse_args(argv)
    config = config_from_arguments(parser, args, cls, method=method)
    for preset in cls.PRESETS:
        if getattr(args, f"preset_{preset}"):
            config = config.with_preset(preset)
    return config


def warn_rounding(config: FewShotConfig) -> None:
    """Say so when ``--episodes`` / ``--val-every`` are not whole updates: the loop counts updates.

    The numbers are the loop's (:func:`fewshot_l2l.training.meta_train`): ``ceil(episodes / per_update)`` updates,
    a validation every ``max(1, round(val_every / per_update))`` updates, ``per_update`` the meta-batch (fine-tuning:
    one mini-batch).
    """
    batch = method_class(config.method).episodes_per_update(config)
    if batch == 1:
        return
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
