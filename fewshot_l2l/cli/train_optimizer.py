"""Meta-train a learned optimizer on a problem distribution (truncated BPTT), then evaluate it on fresh problems.

Thin wrapper over fewshot_l2l.optim.training and fewshot_l2l.optim.evaluation.
"""

from __future__ import annotations

import argparse
import json

from ..optim.evaluation import compare
from ..optim.problems import PROBLEMS, make_problems
from ..optim.rules import GAC_SCOPES, RULES
from ..optim.training import HORIZON_SCHEDULES, OptimizerTrainConfig, load_rule_checkpoint, train_optimizer
from ..utils import resolve_device, seed_everything
from .evaluate_optimizer import ART_OPTIONS, add_art_options, problem_options
from .args import (DEVICE_HELP, command, device_arg, float_at_least, new_parser, non_negative_float, non_negative_int,
                   positive_float, positive_int, seed_int)


def parse_args(argv: list[str] | None = None) -> tuple[OptimizerTrainConfig, argparse.Namespace]:
    defaults = OptimizerTrainConfig()
    parser = new_parser(__doc__)
    parser.add_argument("--problem", default=defaults.problem, choices=PROBLEMS)
    add_art_options(parser)
    parser.add_argument("--rule", default=defaults.rule, choices=RULES,
                        help="andrychowicz: the coordinatewise LSTM; andrychowicz-gac: with global averaging cells; "
                             "ntm-bfgs: the LSTM with GAC and a shared memory; meta-lstm: Ravi & Larochelle's")
    parser.add_argument("--hidden-size", type=positive_int, default=defaults.hidden_size, help="LSTM units per layer")
    parser.add_argument("--output-scale", type=positive_float, default=defaults.output_scale, help="Andrychowicz rule output scale")
    parser.add_argument("--gac-cells", type=non_negative_int, default=None,
                        help="averaged cells per LSTM layer (andrychowicz-gac, ntm-bfgs; default 5)")
    parser.add_argument("--gac-scope", default=defaults.gac_scope, choices=GAC_SCOPES,
                        help="average over each parameter tensor or over the whole model")
    parser.add_argument("--memory-size", type=positive_int, default=defaults.memory_size, help="ntm-bfgs memory side K (K x K)")
    parser.add_argument("--read-heads", type=positive_int, default=defaults.read_heads, help="ntm-bfgs read heads per coordinate")
    parser.add_argument("--per-layer-type", action="store_true",
                        help="one rule for convolutional and one for fully connected layers (same kind and size)")
    parser.add_argument("--horizon", type=positive_int, default=defaults.horizon, help="optimization steps per problem")
    parser.add_argument("--unroll", type=positive_int, default=defaults.unroll, help="steps per truncated-BPTT meta-update")
    parser.add_argument("--horizon-schedule", default=defaults.horizon_schedule, choices=HORIZON_SCHEDULES,
                        help="fixed: every problem runs --horizon steps; random: uniform in [--horizon, --max-horizon]; "
                             "curriculum: growing from --horizon to --max-horizon over the run")
    parser.add_argument("--max-horizon", type=positive_int, default=None,
                        help="longest horizon of the random / curriculum schedules (default 4 x --horizon)")
    parser.add_argument("--meta-batch", type=positive_int, default=None, help="problems per iteration (default: 128 quadratic, 1 mlp / convnet)")
    parser.add_argument("--iterations", type=positive_int, default=defaults.iterations, help="problem batches in total")
    parser.add_argument("--max-minutes", type=positive_float, default=None, help="also stop after this many minutes")
    parser.add_argument("--step-weights", type=non_negative_float, nargs="+", default=(), metavar="W",
                        help="meta-loss weights w_1 w_2 ... of the first steps (the meta-loss is sum_t w_t f(theta_t)); "
                             "later steps weigh 1, as every step does by default (the paper's choice)")
    parser.add_argument("--loss-scale-range", type=float_at_least(1.0), default=defaults.loss_scale_range, metavar="R",
                        help="the rule meta-trains on s f, s log-uniform in [1/R, R] per problem, so that it adapts to the "
                             "scale of the objective (default 1: off)")
    parser.add_argument("--lr", type=positive_float, default=defaults.lr, help="Adam meta-learning rate")
    parser.add_argument("--grad-clip", type=positive_float, default=None, help="meta-gradient norm clip (default: off)")
    parser.add_argument("--val-every", type=positive_int, default=defaults.val_every, help="iterations between validations")
    parser.add_argument("--val-problems", type=positive_int, default=None, help="validation problems (default: 100 quadratic, 10 mlp / convnet)")
    parser.add_argument("--device", default=defaults.device, type=device_arg, help=DEVICE_HELP)
    parser.add_argument("--seed", type=seed_int, default=defaults.seed)
    parser.add_argument("--out", default=defaults.out, help="RUN_DIR for checkpoints and metrics.csv")
    parser.add_argument("--init-from", default=None, help="checkpoint of another run whose rule weights to start from")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt (e.g. with more --iterations)")
    parser.add_argument("--max-nonfinite", type=positive_int, default=defaults.max_nonfinite,
                        help="stop after this many meta-updates in a row skipped for a NaN/inf meta-loss or gradient")
    parser.add_argument("--n-test", type=non_negative_int, default=100, help="held-out problems of the final evaluation (0: skip it)")
    args = parser.parse_args(argv)
    values = {key: value for key, value in vars(args).items() if key not in ("n_test", "debug", *ART_OPTIONS)}
    values["problem_options"] = problem_options(args, ART_OPTIONS)
    try:
        return OptimizerTrainConfig(**values), args
    except ValueError as error:  # a combination the configuration refuses (horizon not a multiple of unroll): usage
        parser.error(str(error))


@command
def main(argv: list[str] | None = None) -> None:
    config, args = parse_args(argv)
    seed_everything(config.seed)  # the global generators, for anything that draws from them: seeded per run
    summary = train_optimizer(config)
    if args.n_test > 0:
        device = resolve_device(config.device)
        rule, _, _ = load_rule_checkpoint(summary["best"], device)
        comparison = compare(rule, make_problems(config.problem, device, **config.problem_options), config.horizon, n_test=args.n_test,
                             n_tune=args.n_test, seed=config.seed)
        print(comparison.table())
        summary["evaluation"] = comparison.summary(config.problem)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
