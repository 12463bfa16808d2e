"""``scripts/benchmark.py``: the speed benchmark's command line (three modes).

* default: per-process meta-training and evaluation speed side by side with the naive
  implementation (:mod:`benchmarks.speed`), one fresh process per (shape, meta-batch);
* ``--profile``: ``torch.profiler`` of one meta-update per configuration;
* ``--throughput``: whole-machine episodes/s with N processes of T threads each
  (``--layouts 1x2 2x1``), with ``--reference DIR`` timed side by side (:mod:`benchmarks.throughput`).

Prints one JSON line per configuration on stdout, then a Markdown table on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from fewshot_l2l.adaptation import BATCHED_LEARNER_MODES
from fewshot_l2l.cli.args import DEVICE_HELP
from fewshot_l2l.devices import device_argument, resolve_device
from fewshot_l2l.kernels import STEP_KERNELS

from .flops import matmul_flops_per_s
from .speed import (
    SHAPES, BenchmarkSettings, _child, add_naive_ratios, environment, markdown_table, profile_meta_update, run_isolated,
)
from .throughput import Layout, ThroughputSettings, measure_throughput, peak_memory_mb, throughput_table


def _layout(text: str) -> Layout:
    try:
        return Layout.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/benchmark.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--meta-batches", nargs="+", type=int, default=None,
                        help="episodes per meta-update (default: 1 16; with --throughput: 2, over all processes)")
    parser.add_argument("--device", default="cpu", type=device_argument, help=DEVICE_HELP)
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch threads (default: all CPUs; OMP_NUM_THREADS=1 environments would otherwise get 1)")
    parser.add_argument("--timed-updates", type=int, default=1, help="timed meta-updates after one warm-up update")
    parser.add_argument("--min-timed-episodes", type=int, default=4, help="time at least this many episodes")
    parser.add_argument("--naive-episodes", type=int, default=2, help="timed episodes of the naive implementation")
    parser.add_argument("--compile", action="store_true", help="torch.compile the meta-learner step")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast for the learner")
    parser.add_argument("--step-kernel", default="auto", choices=STEP_KERNELS,
                        help="our meta-learner step: the fused kernel (auto: where built and applicable) or plain torch")
    parser.add_argument("--in-process", action="store_true", help="no subprocesses (peak memory then accumulates)")
    parser.add_argument("--profile", action="store_true",
                        help="instead: torch.profiler of one meta-update per configuration (summary JSON + top-ops table)")
    throughput = parser.add_argument_group("throughput mode")
    throughput.add_argument("--throughput", action="store_true",
                            help="instead: whole-machine episodes/s of meta-training (data-parallel, as under torchrun) "
                                 "and of evaluation, for each layout")
    throughput.add_argument("--layouts", nargs="+", type=_layout, default=[Layout(1, 2), Layout(2, 1)],
                            metavar="NxT", help="N processes of T threads each (default: 1x2 2x1)")
    throughput.add_argument("--reference", metavar="DIR", default=None,
                            help="time the reference (a checkout of markdtw/meta-learning-lstm-pytorch) side by side, "
                                 "alternating episode by episode in every process")
    throughput.add_argument("--pairs", type=int, default=4, help="timed calls per phase and process (after one warm-up)")
    throughput.add_argument("--batched-learner", default="auto", choices=BATCHED_LEARNER_MODES,
                            help="our learner vmapped over the meta-batch (auto: on CUDA)")
    args = parser.parse_args(argv)
    if args.meta_batches is None:
        args.meta_batches = [2] if args.throughput else [1, 16]
    if args.reference is not None and not args.throughput:
        parser.error("--reference needs --throughput")
    if args.throughput:
        for layout in args.layouts:
            for meta_batch in args.meta_batches:
                if meta_batch % layout.processes:
                    parser.error(f"--meta-batches {meta_batch} is not divisible by the {layout.processes} processes "
                                 f"of layout {layout}: every process draws meta_batch / processes episodes")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.throughput:
        return run_throughput(args, device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.profile:
        for shape_name in args.shapes:
            for meta_batch in args.meta_batches:
                summary, table = profile_meta_update(SHAPES[shape_name], meta_batch, str(device),
                                                     step_kernel=args.step_kernel)
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
                compile=args.compile, amp=args.amp, step_kernel=args.step_kernel, matmul_flops_per_s=rate,
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


def run_throughput(args: argparse.Namespace, device: torch.device) -> None:
    """``--throughput``: one row per (shape, layout, meta-batch), then peak memory per process."""
    cores = max(layout.processes * layout.threads for layout in args.layouts)
    torch.set_num_threads(cores)
    rate = matmul_flops_per_s(device)  # the machine's floor: all the cores the layouts use
    print(json.dumps({"environment": environment(), "matmul_gflop_per_s": rate / 1e9, "matmul_threads": cores,
                      "reference": args.reference}), flush=True)
    rows = []
    for shape_name in args.shapes:
        memory: dict = {}  # (side, episodes per process, threads) -> MiB, measured once
        for layout in args.layouts:
            for meta_batch in args.meta_batches:
                settings = ThroughputSettings(meta_batch=meta_batch, pairs=args.pairs, reference=args.reference,
                                              amp=args.amp, batched_learner=args.batched_learner,
                                              step_kernel=args.step_kernel, device=str(device))
                row = measure_throughput(SHAPES[shape_name], layout, settings, rate)
                share = meta_batch // layout.processes
                for side in ("ours",) + (("reference",) if args.reference else ()):
                    key = (side, share if side == "ours" else 1, layout.threads)
                    if key not in memory:
                        memory[key] = peak_memory_mb(SHAPES[shape_name], side, key[1], layout.threads, settings)
                    row["peak_mb" if side == "ours" else "reference_peak_mb"] = memory[key]
                print(json.dumps(row), flush=True)
                rows.append(row)
    print(f"matmul rate {rate / 1e9:.1f} GFLOP/s on {cores} threads, device {device}", file=sys.stderr)
    print(throughput_table(rows), file=sys.stderr)
