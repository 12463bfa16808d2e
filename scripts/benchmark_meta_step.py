#!/usr/bin/env python3
"""The meta-learner step alone, side by side: ways of running its first-order backward, layer-1 LSTM cells, tanh.

One thread. Prints one JSON line per measurement, then a summary (medians over repeats) on stderr; see
benchmarks/meta_step.py for what is timed. Each (variant, size) of the step runs in a fresh process, and
``--rounds`` repeats the whole comparison so that run-to-run noise shows.
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
    parser.add_argument("--variants", nargs="+", default=list(STEP_VARIANTS), choices=list(STEP_VARIANTS))
    parser.add_argument("--configs", nargs="+", default=["omniglot:1", "omniglot:16", "miniimagenet:1"],
                        help="SIZE:META_BATCH pairs, SIZE one of " + ", ".join(SIZES))
    parser.add_argument("--inner-steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3, help="timed episodes (meta-batches) per process")
    parser.add_argument("--rounds", type=int, default=2, help="times the whole step comparison is repeated")
    parser.add_argument("--no-step", action="store_true", help="skip the step comparison")
    parser.add_argument("--no-cells", action="store_true", help="skip the LSTM-cell and activation comparison")
    args = parser.parse_args(argv)

    configs = []
    for spec in args.configs:
        size, _, batch = spec.partition(":")
        if size not in SIZES or not batch.isdigit():
            parser.error(f"--configs: {spec!r} is not SIZE:META_BATCH with SIZE one of {', '.join(SIZES)}")
        configs.append((size, SIZES[size], int(batch)))
    summary = []
    if not args.no_cells:
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
                for variant in args.variants:
                    row = {"round": round_index, "size": size,
                           **run_isolated(variant, n_params, batch, args.inner_steps, 20, args.repeats)}
                    print(json.dumps(row), flush=True)
                    summary.append(
                        f"round {round_index} {size} B={batch} {variant:20s} train {median(row['train_cpu_s_per_episode']):.3f} "
                        f"eval {median(row['eval_cpu_s_per_episode']):.3f} CPU-s/episode, +{row['train_peak_added_mb']:.0f} MiB peak (training)")
    print("\n".join(summary), file=sys.stderr)


if __name__ == "__main__":
    main()
