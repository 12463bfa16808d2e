#!/usr/bin/env python3
"""Meta-training and evaluation speed, side by side with a naive sequential implementation.

Prints one JSON line per (shape, meta-batch) configuration on synthetic data;
see benchmarks/speed.py for what every key means. Each configuration
runs in a fresh process so that its peak memory is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

# benchmarks/ is part of the repository, not of the installed package: run from a clone.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.speed import (  # noqa: E402
    SHAPES, BenchmarkSettings, add_naive_ratios, environment, markdown_table, matmul_flops_per_s, profile_meta_update,
    run_isolated,
)
from fewshot_l2l.cli.args import DEVICE_HELP, device_arg  # noqa: E402
from fewshot_l2l.utils import resolve_device  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--meta-batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--device", default="cpu", type=device_arg, help=DEVICE_HELP)
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch threads (default: all CPUs; OMP_NUM_THREADS=1 environments would otherwise get 1)")
    parser.add_argument("--timed-updates", type=int, default=1, help="timed meta-updates after one warm-up update")
    parser.add_argument("--min-timed-episodes", type=int, default=4, help="time at least this many episodes")
    parser.add_argument("--naive-episodes", type=int, default=2, help="timed episodes of the naive implementation")
    parser.add_argument("--compile", action="store_true", help="torch.compile the meta-learner step")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast for the learner")
    parser.add_argument("--in-process", action="store_true", help="no subprocesses (peak memory then accumulates)")
    parser.add_argument("--profile", action="store_true",
                        help="instead: torch.profiler of one meta-update per configuration (summary JSON + top-ops table)")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.profile:
        for shape_name in args.shapes:
            for meta_batch in args.meta_batches:
                summary, table = profile_meta_update(SHAPES[shape_name], meta_batch, str(device))
                print(json.dumps(summary))
                print(table, flush=True)
        return
    rate = matmul_flops_per_s(device)
    print(json.dumps({"environment": environment(), "matmul_gflop_per_s": rate / 1e9}), flush=True)
    rows = []
    for shape_name in args.shapes:
        naive_row = None  # the naive implementation is timed once per shape, in its first configuration
        for meta_batch in args.meta_batches:
            settings = BenchmarkSettings(
                meta_batch=meta_batch, device=str(device), timed_updates=args.timed_updates,
                min_timed_episodes=args.min_timed_episodes, naive_episodes=args.naive_episodes if naive_row is None else 0,
                compile=args.compile, amp=args.amp, matmul_flops_per_s=rate,
            )
            if args.in_process:
                row = _child(shape_name, settings, args.threads)
            else:
                row = run_isolated(shape_name, settings, args.threads)
            if naive_row is None:
                naive_row = row
            elif "naive_train_episodes_per_s" in naive_row:
                add_naive_ratios(row, naive_row)
                row["naive_timed_in_meta_batch"] = naive_row["meta_batch"]
            print(json.dumps(row), flush=True)
            rows.append(row)
    # The human-readable summary goes to stderr so that stdout stays one JSON object per line.
    print(f"matmul rate {rate / 1e9:.1f} GFLOP/s, {torch.get_num_threads()} threads, device {device}", file=sys.stderr)
    print(markdown_table(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
