"""Evaluate a learned-optimizer checkpoint against SGD, Nesterov SGD, RMSprop and Adam with tuned learning rates.

Prints a table (or, with --json, one JSON line) and saves the mean loss curves as a PNG .
Thin wrapper over fewshot_l2l.optim.comparison.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..devices import device_argument, resolve_device
from ..optim import PROBLEMS, make_problems
from ..optim.comparison import BASELINES, DEFAULT_LR_GRID, compare_with_baselines, plot_curves, rule_run
from ..optim.neural_art import save_art_grid
from ..optim.problems import ACTIVATIONS
from ..optim.rule_training import load_rule_checkpoint
from ..plots import require_matplotlib
from .args import DEVICE_HELP, command, new_parser, output_file, positive_float, positive_int, seed_int


VARIANT_OPTIONS = ("hidden", "layers", "activation")
ART_OPTIONS = ("image_size", "vgg_weights", "content_dir", "style_image")


def add_art_options(parser) -> None:
    """The neural-art problem's flags (also of fewshot-train-optimizer)."""
    parser.add_argument("--image-size", type=positive_int, default=None, help="neural-art: image side (default 64)")
    parser.add_argument("--vgg-weights", default=None,
                        help="neural-art: torchvision vgg16 / vgg19 state_dict file (default: a fixed random conv network)")
    parser.add_argument("--content-dir", default=None, help="neural-art: folder of content images (default: coloured glyphs)")
    parser.add_argument("--style-image", default=None, help="neural-art: style image file (default: a procedural pattern)")


def problem_options(args, names=VARIANT_OPTIONS + ART_OPTIONS) -> dict:
    """The ``make_problems`` options given on the command line (flags left at ``None`` are left out)."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


@command
def main(argv: list[str] | None = None) -> None:
    parser = new_parser(__doc__)
    parser.add_argument("--checkpoint", required=True, help="RUN_DIR/best.pt (or last.pt, init.pt) of fewshot-train-optimizer")
    parser.add_argument("--horizon", type=positive_int, default=None, help="steps per problem (default: the trained horizon)")
    parser.add_argument("--problem", default=None, choices=PROBLEMS,
                        help="problem distribution (default: the one the rule was trained on)")
    parser.add_argument("--hidden", type=positive_int, default=None, help="mlp / convnet: hidden units (generalization)")
    parser.add_argument("--layers", type=positive_int, default=None, help="mlp: hidden layers (generalization)")
    parser.add_argument("--activation", default=None, choices=list(ACTIVATIONS), help="mlp: activation (generalization)")
    add_art_options(parser)
    parser.add_argument("--images", type=output_file, default=None,
                        help="neural-art: PNG of content | result | style for 4 test images (default: <plot>_images.png)")
    parser.add_argument("--n-test", type=positive_int, default=100, help="held-out test problems")
    parser.add_argument("--n-tune", type=positive_int, default=100, help="problems for the baselines' learning-rate search")
    parser.add_argument("--lr-grid", type=positive_float, nargs="+", default=list(DEFAULT_LR_GRID), help="learning rates tried")
    parser.add_argument("--baselines", nargs="+", default=list(BASELINES), choices=list(BASELINES))
    parser.add_argument("--plot", type=output_file, default=None, help="PNG path (default: next to the checkpoint, <name>_h<horizon>.png)")
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of the tuning and test problems")
    parser.add_argument("--device", default="auto", type=device_argument, help=DEVICE_HELP)
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    args = parser.parse_args(argv)

    require_matplotlib()  # before the comparison, which can take an hour, rather than at the plot after it
    device = resolve_device(args.device)
    rule, config, _ = load_rule_checkpoint(args.checkpoint, device)
    horizon = config.horizon if args.horizon is None else args.horizon
    problem = config.problem if args.problem is None else args.problem
    options = problem_options(args)
    trained_options = config.problem_options if problem == config.problem else {}
    try:
        distribution = make_problems(problem, device, **{**trained_options, **options})
    except ValueError as error:
        parser.error(str(error))
    comparison = compare_with_baselines(rule, distribution, horizon, n_test=args.n_test, n_tune=args.n_tune,
                                        seed=args.seed, lr_grid=args.lr_grid, baselines=args.baselines,
                                        progress=not args.json)
    checkpoint = Path(args.checkpoint)
    variant = "".join(f"_{key}{value}" for key, value in options.items() if key in VARIANT_OPTIONS + ("image_size",))
    suffix = ("" if problem == config.problem else f"_{problem}") + variant
    plot = args.plot if args.plot is not None else str(checkpoint.with_name(f"{checkpoint.stem}{suffix}_h{horizon}.png"))
    described = problem + "".join(f" {key}={value}" for key, value in options.items())
    trained_horizons = str(config.horizon) if config.max_horizon == config.horizon else f"{config.horizon}..{config.max_horizon}"
    trained = f"trained {trained_horizons}" + ("" if problem == config.problem else f" on {config.problem}")
    plot_curves(comparison, plot, f"{described}: {config.rule} rule, horizon {horizon} ({trained})")
    summary = comparison.summary(problem)
    summary["problem_options"] = {**trained_options, **options}
    if problem == "neural-art":
        summary["images"] = args.images or str(Path(plot).with_name(Path(plot).stem + "_images.png"))
        grid_problems = distribution.sample(4, args.seed, split="test")
        save_art_grid(grid_problems, rule_run(rule, grid_problems, horizon)[1], summary["images"])
    summary["plot"] = plot
    if args.json:
        print(json.dumps(summary))
    else:
        print(comparison.table())
        print(f"final loss ratio {summary['final_loss_ratio']:.3f} (vs {summary['best_baseline']}), "
              f"sum of losses ratio {summary['sum_loss_ratio']:.3f} (vs {summary['best_baseline_sum']}); plot: {plot}")


if __name__ == "__main__":
    main()
