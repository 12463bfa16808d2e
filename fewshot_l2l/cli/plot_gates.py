"""Draw what a meta-trained meta-learner learned (Ravi & Larochelle, Fig. 2): its input gate sigmoid(i_t)
(the learned learning rate) and forget gate sigmoid(f_t) over the inner steps, per parameter tensor of the
learner, on seeded episodes of a split (the same episodes and inner loop as scripts/evaluate.py with the same
--seed and --batch-size). Thin wrapper over fewshot_l2l.gates and fewshot_l2l.plots; installed as
``fewshot-plot-gates``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..checkpoints import checkpoint_splits, load_checkpoint
from ..data.episodes import EpisodeSampler
from ..devices import device_argument, resolve_device
from ..gates import gate_statistics
from ..methods.base import EVAL_BATCH_SIZE
from ..methods.meta_lstm import MetaLSTMMethod
from ..plots import plot_gate_statistics
from .args import DEVICE_HELP, command, new_parser, output_file, positive_int, seed_int


@command
def main(argv: list[str] | None = None) -> None:
    parser = new_parser(__doc__)
    parser.add_argument("--checkpoint", required=True, help="RUN_DIR/best.pt, last.pt or init.pt of scripts/train.py")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--episodes", type=positive_int, default=100, help="episodes the statistics are taken over")
    parser.add_argument("--batch-size", type=positive_int, default=EVAL_BATCH_SIZE, help="episodes adapted at once")
    parser.add_argument("--data", default=None, help="dataset file; default: the one the checkpoint was trained on")
    parser.add_argument("--seed", type=seed_int, default=0, help="episode seed: same seed, same episodes")
    parser.add_argument("--device", default="auto", type=device_argument, help=DEVICE_HELP)
    parser.add_argument("--out", type=output_file, default=None, help="PNG path (default: next to the checkpoint, <name>_gates.png)")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    loaded = load_checkpoint(args.checkpoint, device)
    config, method = loaded.config, loaded.method
    if not isinstance(method, MetaLSTMMethod):
        raise ValueError(f"checkpoint {args.checkpoint} was trained with --method {config.method}, which has no gates: "
                         "plot_gates draws the Meta-LSTM's (a checkpoint of scripts/train.py without --method)")
    split = checkpoint_splits(args.checkpoint, loaded, args.data)[args.split]
    sampler = EpisodeSampler(split.to(device), config.n_way, config.k_shot, config.n_query, seed=args.seed)
    batches = (sampler.sample(min(args.batch_size, args.episodes - start)) for start in range(0, args.episodes, args.batch_size))
    stats = gate_statistics(method.meta_learner, method.learner, batches, method.inner,
                            generator=torch.Generator().manual_seed(args.seed))
    checkpoint = Path(args.checkpoint)
    out = Path(args.out) if args.out is not None else checkpoint.with_name(f"{checkpoint.stem}_gates.png")
    plot_gate_statistics(stats, out, f"meta-learner gates: {checkpoint}, {config.dataset}/{args.split}, "
                                     f"{config.n_way}-way {config.k_shot}-shot")
    print(stats.table())
    print(json.dumps({"checkpoint": str(checkpoint), "split": args.split, "n_episodes": stats.n_episodes, "out": str(out)}))


if __name__ == "__main__":
    main()
