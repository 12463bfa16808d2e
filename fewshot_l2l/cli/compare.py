"""Train every method for the same wall-clock budget, evaluate each on the same seeded test episodes (query batch
norm from the support set, not transductive, and from the query batch, transductive) and print a markdown table
(or, with --json, one JSON line per method). Each method's run folder is OUT/METHOD; --resume skips finished ones."""

from __future__ import annotations

import json
from dataclasses import asdict

from ..compare import ComparisonSpec, compare, format_settings, markdown_table, method_settings
from ..data import DATASETS, ROTATE_CHOICES
from ..devices import device_argument
from ..methods import METHODS
from .args import DEVICE_HELP, command, int_at_least, new_parser, positive_float, positive_int, seed_int


@command
def main(argv: list[str] | None = None) -> None:
    parser = new_parser(__doc__)
    parser.add_argument("--data", default=None, help="dataset file (HDF5); without it, the embedded glyphs")
    parser.add_argument("--dataset", default=None, choices=DATASETS,
                        help="default: omniglot with --data, glyphs without")
    parser.add_argument("--k-shot", type=positive_int, required=True)
    parser.add_argument("--n-way", type=int_at_least(2), default=5)
    parser.add_argument("--minutes", type=positive_float, required=True, help="training budget of each method")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=tuple(METHODS))
    parser.add_argument("--episodes", type=positive_int, default=600, help="test episodes (the same for every method)")
    parser.add_argument("--val-episodes", type=positive_int, default=200, help="episodes of each validation")
    parser.add_argument("--rotate", default="auto", choices=ROTATE_CHOICES,
                        help="splits whose classes get rotated copies, for every method (train+val: 20-way on the "
                             "minimal Omniglot build, whose validation alphabet has 17 characters)")
    parser.add_argument("--validations", type=positive_int, default=20,
                        help="validations of each method, once per equal share of its training time (20: every 5%%)")
    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument("--device", default="cpu", type=device_argument, help=DEVICE_HELP)
    parser.add_argument("--out", default="runs/compare", help="one run folder per method under it")
    parser.add_argument("--resume", action="store_true", help="skip finished methods, continue an interrupted one")
    parser.add_argument("--force", action="store_true",
                        help="run every method again from the start, replacing the files of earlier runs in OUT/METHOD")
    parser.add_argument("--json", action="store_true", help="one JSON line per method instead of the table")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="METHOD.NAME=VALUE",
                        help="a method's own settings other than its defaults (its options of scripts/train.py --method "
                             "METHOD), e.g. maml.inner_lr=2 meta-lstm.inner_steps=6; recorded in result.json")
    args = parser.parse_args(argv)
    if args.resume and args.force:
        parser.error("--resume continues the methods' runs, --force starts them over: give one of them")
    try:
        settings = method_settings(args.set, args.methods)
    except ValueError as error:
        parser.error(str(error))
    dataset = args.dataset or ("omniglot" if args.data else "glyphs")
    spec = ComparisonSpec(dataset=dataset, data=args.data, n_way=args.n_way, k_shot=args.k_shot, minutes=args.minutes,
                          out=args.out, test_episodes=args.episodes, val_episodes=args.val_episodes,
                          validations=args.validations, rotate=args.rotate, seed=args.seed,
                          device=args.device, resume=args.resume, force=args.force, settings=settings)
    on_result = (lambda r: print(json.dumps(asdict(r)), flush=True)) if args.json else None
    results = compare(args.methods, spec, on_result)
    if not args.json:
        own = "".join(f"; {method}: {format_settings(values)}" for method, values in settings.items())
        print(f"{dataset}, {args.n_way}-way {args.k_shot}-shot, {args.minutes:g} min of training per method, "
              f"{args.episodes} test episodes (seed {args.seed}){own}:\n")
        print(markdown_table(results))


if __name__ == "__main__":
    main()
