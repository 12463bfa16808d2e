"""Evaluate a trained checkpoint of any few-shot method (the checkpoint says which): few-shot accuracy (mean and
95% CI) over seeded episodes, the same episodes for every method with the same --seed and --batch-size."""

from __future__ import annotations

import json

from ..checkpoints import checkpoint_splits, load_checkpoint
from ..devices import device_argument, resolve_device, tune_cpu_allocator
from ..evaluation import evaluate
from ..learner import EVAL_QUERY_BN, QUERY_BN_MODES
from ..methods import METHODS
from ..methods.base import EVAL_BATCH_SIZE
from .args import DEVICE_HELP, command, new_parser, positive_int, seed_int


@command
def main(argv: list[str] | None = None) -> None:
    parser = new_parser(__doc__)
    parser.add_argument("--checkpoint", required=True, help="RUN_DIR/best.pt, last.pt or init.pt")
    parser.add_argument("--method", default=None, choices=tuple(METHODS),
                        help="the method the checkpoint must have been trained with (default: whichever it records)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--episodes", type=positive_int, default=600)
    parser.add_argument("--data", default=None, help="dataset file; default: the one the checkpoint was trained on")
    parser.add_argument("--k-shot", type=positive_int, default=None, help="default: the checkpoint's")
    parser.add_argument("--n-query", type=positive_int, default=None, help="default: the checkpoint's")
    parser.add_argument("--inner-steps", type=positive_int, default=None,
                        help="default: the checkpoint's (maml/fomaml/metasgd: its test-time inner steps)")
    parser.add_argument("--query-bn", default=EVAL_QUERY_BN, choices=QUERY_BN_MODES,
                        help="batch-norm statistics of the query set: support (not transductive, each query image "
                             "classified on its own, as the authors evaluate) or batch (the query set's own, transductive)")
    parser.add_argument("--batch-size", type=positive_int, default=EVAL_BATCH_SIZE, help="episodes evaluated at once")
    parser.add_argument("--device", default="auto", type=device_argument, help=DEVICE_HELP)
    parser.add_argument("--seed", type=seed_int, default=0, help="episode seed: same seed, same episodes")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    args = parser.parse_args(argv)

    tune_cpu_allocator()
    device = resolve_device(args.device)
    loaded = load_checkpoint(args.checkpoint, device)
    config = loaded.config
    if args.method is not None and args.method != config.method:
        raise ValueError(f"--method {args.method}: checkpoint {args.checkpoint} was trained with --method {config.method}")
    split = checkpoint_splits(args.checkpoint, loaded, args.data)[args.split].to(device)
    result = evaluate(loaded.method, split, n_episodes=args.episodes, seed=args.seed, batch_size=args.batch_size,
                      query_bn=args.query_bn, k_shot=args.k_shot, n_query=args.n_query, inner_steps=args.inner_steps,
                      progress=not args.json)
    k_shot = config.k_shot if args.k_shot is None else args.k_shot
    if args.json:
        print(json.dumps({
            "checkpoint": args.checkpoint, "method": config.method, "split": args.split, "n_way": config.n_way,
            "k_shot": k_shot, "accuracy": result.accuracy, "ci95": result.ci95,
            "n_episodes": result.n_episodes, "query_bn": args.query_bn,
        }))
    else:
        print(f"{args.checkpoint} ({config.method}) on {config.dataset}/{args.split}, {config.n_way}-way {k_shot}-shot, "
              f"query BN {args.query_bn}: {result}")


if __name__ == "__main__":
    main()
