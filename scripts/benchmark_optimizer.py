#!/usr/bin/env python3
"""LearnedOptimizer (the Meta-LSTM and the LSTM rule of Andrychowicz et al., each fused and plain) against
torch.optim.Adam (foreach): seconds per optimizer step and optimizer-state memory on a 1M-parameter MLP and on
ResNet-18, 1 and 2 threads. One JSON line per configuration (each in a fresh process), then a summary with each
rule's plain/fused step-time ratio on stderr. benchmarks/optimizer_step.py says what is timed;
docs/results/optimizer_step.md gives the command and its figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# benchmarks/ is part of the repository, not of the installed package: run from a clone.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.optimizer_step import MODELS, OPTIMIZERS, run_isolated  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process (after two warm-up steps)")
    args = parser.parse_args(argv)
    summary = []
    for model in args.models:
        for threads in args.threads:
            rows = {}
            for name in args.optimizers:
                row = rows[name] = run_isolated(model, name, threads, args.steps)
                print(json.dumps(row), flush=True)
                if "failed" in row:
                    summary.append(f"{model} {threads} thr {name:20s} failed: {row['failed']}")
                else:
                    summary.append(f"{model} {threads} thr {name:20s} {row['median_step_wall_s']:.3f} s/step, state "
                                   f"{row['state_mb']:.0f} MiB ({row['state_bytes_per_param']:.0f} B/param), "
                                   f"+{row['peak_added_mb']:.0f} MiB peak, load {row['loadavg']:.2f}")
            for rule in ("meta-lstm", "andrychowicz"):
                fused, plain = rows.get(f"{rule}/fused"), rows.get(f"{rule}/torch")
                if fused and plain and "failed" not in fused and "failed" not in plain:
                    ratio = plain["median_step_wall_s"] / fused["median_step_wall_s"]
                    print(json.dumps({"model": model, "threads": threads, "rule": rule, "plain_over_fused": ratio}), flush=True)
                    summary.append(f"    {rule}: plain / fused {ratio:.2f}x")
    print("\n".join(summary), file=sys.stderr)


if __name__ == "__main__":
    main()
