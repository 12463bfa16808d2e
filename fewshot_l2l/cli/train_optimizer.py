"""Meta-train a learned optimizer on a problem distribution (truncated BPTT), then evaluate it on fresh problems.

Thin wrapper over fewshot_l2l.optim.rule_training and fewshot_l2l.optim.comparison.
"""

from __future__ import annotations

import argparse
import json

from ..devices import resolve_device, seed_everything
from ..optim import make_problems
from ..optim.comparison import compare_with_baselines
from ..optim.rule_config import OptimizerTrainConfig
from ..optim.rule_training import load_rule_checkpoint, train_optimizer
from .options import add_arguments, config_from_arguments
from .args import command, new_parser, non_negative_int
from .evaluate_optimizer import ART_OPTIONS, add_art_options, problem_options


def parse_args(argv: list[str] | None = None) -> tuple[OptimizerTrainConfig, argparse.Namespace]:
    parser = new_parser(__doc__)
    add_arguments(parser, OptimizerTrainConfig)
    add_art_options(parser)
    parser.add_argument("--n-test", type=non_negative_int, default=100, help="held-out problems of the final evaluation (0: skip it)")
    args = parser.parse_args(argv)
    return config_from_arguments(parser, args, OptimizerTrainConfig,
                                 problem_options=problem_options(args, ART_OPTIONS)), args


@command
def main(argv: list[str] | None = None) -> None:
    config, args = parse_args(argv)
    seed_everything(config.seed)  # the global generators, for anything that draws from them: seeded per run
    summary = train_optimizer(config)
    if args.n_test > 0:
        device = resolve_device(config.device)
        rule, _, _ = load_rule_checkpoint(summary["best"], device)
        comparison = compare_with_baselines(rule, make_problems(config.problem, device, **config.problem_options),
                                            config.horizon, n_test=args.n_test, n_tune=args.n_test, seed=config.seed)
        print(comparison.table())
        summary["evaluation"] = comparison.summary(config.problem)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
