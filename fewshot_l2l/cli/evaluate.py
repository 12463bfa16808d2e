"""Evaluate a trained checkpoint (the Meta-LSTM or a baseline; the checkpoint says which): few-shot accuracy
(mean and 95% CI) over seeded episodes."""

from __future__ import annotations

import json

from ..baselines import METHODS
from ..baselines.training import checkpoint_method, evaluate_method, load_baseline
from ..evaluation import evaluate
from ..learner import EVAL_QUERY_BN, QUERY_BN_MODES
from ..training import checkpoint_splits, load_checkpoint
from ..utils import resolve_device, tune_cpu_allocator
from .args import DEVICE_HELP, command, device_arg, new_parser, positive_int, seed_int


@command
def main(argv: list[str] | None = None) -> None:
    parser = new_parser(__doc__)
    parser.add_argument("--checkpoint", required=True, help="RUN_DIR/best.pt, last.pt or init.pt")
    parser.add_argument("--method", default=None, choices=METHODS,
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
    parser.add_argument("--batch-size", type=positive_int, default=8, help="episodes evaluated at once")
    parser.add_argument("--device", default="auto", type=device_arg, help=DEVICE_HELP)
    parser.add_argument("--seed", type=seed_int, default=0, help="episode seed: same seed, same episodes")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    args = parser.parse_args(argv)

    tune_cpu_allocator()
    device = resolve_device(args.device)
    method = checkpoint_method(args.checkpoint)
    if args.method is not None and args.method != method:
        raise ValueError(f"--method {args.method}: checkpoint {args.checkpoint} was trained with --method {method}")
    if method == "meta-lstm":
        meta_learner, learner, config, checkpoint = load_checkpoint(args.checkpoint, device)
        splits = checkpoint_splits(args.checkpoint, config, checkpoint, args.data, learner)
    else:
        model, config, checkpoint, splits = load_baseline(args.checkpoint, device, data=args.data)
    split = splits[args.split].to(device)
    k_shot = config.k_shot if args.k_shot is None else args.k_shot
    n_query = config.n_query if args.n_query is None else args.n_query
    if method == "meta-lstm":
        inner_steps = config.inner_steps if args.inner_steps is None else args.inner_steps
        result = evaluate(
            meta_learner, learner, split, config.n_way, k_shot, n_query, inner_steps,
            n_episodes=args.episodes, seed=args.seed, batch_size=args.batch_size,
            inner_batch_size=config.inner_batch_size, query_bn=args.query_bn, progress=not args.json, amp=config.amp,
            divide_grad=config.divide_grad,
        )
    else:
        result = evaluate_method(model, split, config.n_way, k_shot, n_query, n_episodes=args.episodes, seed=args.seed,
                                 batch_size=args.batch_size, query_bn=args.query_bn, inner_steps=args.inner_steps,
                                 progress=not args.json)
    if args.json:
        print(json.dumps({
            "checkpoint": args.checkpoint, "method": method, "split": args.split, "n_way": config.n_way,
            "k_shot": k_shot, "accuracy": result.accuracy, "ci95": result.ci95,
            "n_episodes": result.n_episodes, "query_bn": args.query_bn,
        }))
    else:
        print(f"{args.checkpoint} ({method}) on {config.dataset}/{args.split}, {config.n_way}-way {k_shot}-shot, query BN {args.query_bn}: {result}")


if __name__ == "__main__":
    main()
