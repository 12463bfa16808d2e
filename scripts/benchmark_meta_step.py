#!/usr/bin/env python3
"""The meta-learner step alone, side by side: the fused kernel against the plain (checkpointed) step, and other
ways of running it; layer-1 LSTM cells; tanh.

Prints one JSON line per measurement, then a summary on stderr (medians over repeats; for each configuration the
plain step's time over the fused step's, measured in the same round). See benchmarks/meta_step.py for what is
timed. Each (variant, size, hidden size, threads) runs in a fresh process, and ``--rounds`` repeats the whole
comparison so that run-to-run noise shows. docs/results/meta_step.md gives the command and its figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# benchmarks/ is part of the repository, not of the installed package: run from a clone.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.meta_step import (  # noqa: E402
    SIZES, STEP_VARIANTS, median, run_isolated, time_activations, time_lstm_cells,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["fused", "checkpoint"], choices=list(STEP_VARIANTS))
    parser.add_argument("--configs", nargs="+", default=["omniglot:1", "miniimagenet:1"],
                        help="SIZE:META_BATCH pairs, SIZE one of " + ", ".join(SIZES))
    parser.add_argument("--hidden-sizes", nargs="+", type=int, default=[20, 8])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (on CUDA, --threads only sets the host's threads)")
    parser.add_argument("--inner-steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3, help="timed episodes (meta-batches) per process")
    parser.add_argument("--rounds", type=int, default=2, help="times the whole step comparison is repeated")
    parser.add_argument("--no-step", action="store_true", help="skip the step comparison")
    parser.add_argument("--cells", action="store_true", help="also compare LSTM cells and activations (one thread)")
    args = parser.parse_args(argv)

    configs = []
    for spec in args.configs:
        size, _, batch = spec.partition(":")
        if size not in SIZES or not batch.isdigit():
            parser.error(f"--configs: {spec!r} is not SIZE:META_BATCH with SIZE one of {', '.join(SIZES)}")
        configs.append((size, SIZES[size], int(batch)))
    summary = []
    if args.cells:
        for rows in SIZES.values():
            row = time_lstm_cells(rows)
            print(json.dumps(row), flush=True)
            summary.append(f"layer 1, {rows} rows, fwd+bwd CPU ms: lstm_cell {1e3 * median(row['lstm_cell_cpu_s']):.2f}, "
                           f"nn.LSTMCell {1e3 * median(row['nn.LSTMCell_cpu_s']):.2f} (max |diff| {row['max_abs_difference']:.1e})")
            row = time_activations(rows * 20)
            print(json.dumps(row), flush=True)
            summary.append(f"activations, {rows * 20} floats, CPU ms: " + ", ".join(
                f"{key[:-6]} {1e3 * median(value):.2f}" for key, value in row.items() if key.endswith("_cpu_s")))
    if not args.no_step:
        for round_index in range(args.rounds):
            for size, n_params, batch in configs:
                for hidden in args.hidden_sizes:
                    for threads in args.threads:
                        rows = {}
                        for variant in args.variants:
                            row = rows[variant] = {"round": round_index, "size": size, **run_isolated(
                                variant, n_params, batch, args.inner_steps, hidden, args.repeats, threads, args.device)}
                            print(json.dumps(row), flush=True)
                            summary.append(
                                f"round {round_index} {size} B={batch} H={hidden} {threads} thr {variant:20s} "
                                f"train {median(row['train_cpu_s_per_episode']):.3f} CPU-s {median(row['train_wall_s_per_episode']):.3f} s "
                                f"(floor fraction {row['train_floor_fraction']:.2f}), eval {median(row['eval_cpu_s_per_episode']):.3f} "
                                f"CPU-s, +{row['train_peak_added_mb']:.0f} MiB peak (training), load {row['loadavg']:.2f}")
                        if "fused" in rows and "checkpoint" in rows:
                            ratio = {phase: median(rows["checkpoint"][f"{phase}_wall_s_per_episode"])
                                     / median(rows["fused"][f"{phase}_wall_s_per_episode"]) for phase in ("train", "eval")}
                            print(json.dumps({"round": round_index, "size": size, "meta_batch": batch, "hidden_size": hidden,
                                              "threads": threads, "checkpoint_over_fused_train": ratio["train"],
                                              "checkpoint_over_fused_eval": ratio["eval"]}), flush=True)
                            summary.append(f"    checkpoint / fused (wall): train {ratio['train']:.2f}x, eval {ratio['eval']:.2f}x")
    print("\n".join(summary), file=sys.stderr)


if __name__ == "__main__":
    main()
