#!/usr/bin/env python3
"""Benchmark on real Omniglot: build the HDF5 from the two minimal background zips (alphabet-disjoint split),
meta-train 5-way 1-shot and 5-way 5-shot concurrently (one CPU thread each, a time budget each), then evaluate
each best.pt on 600 test episodes of the held-out alphabets, and print a Markdown table.

Everything goes through the same entry points as a user would: scripts/prepare_data.py, scripts/train.py and
scripts/evaluate.py, run as subprocesses so that the two settings train at the same time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the library's atomic writer, also when run without PYTHONPATH
from fewshot_l2l.files import atomic_write  # noqa: E402
DEFAULT_SHARED = Path(os.environ.get("FEWSHOT_L2L_SHARED", REPO.parent / "shared"))
SETTINGS = {"5-way 1-shot": 1, "5-way 5-shot": 5}


def run_json(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    """Start ``command`` with stdout to be parsed (its last line is JSON) and stderr (progress) to ``log``."""
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, cwd=REPO)


def last_json(process: subprocess.Popen, what: str, log: Path) -> dict:
    out, _ = process.communicate()
    if process.returncode != 0:
        sys.exit(f"bench_omniglot: {what} failed (exit {process.returncode}); see {log}")
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zips", nargs="+", type=Path,
                        default=[DEFAULT_SHARED / "data/omniglot" / f"images_background_small{i}.zip" for i in (1, 2)])
    parser.add_argument("--out", type=Path, default=REPO / "runs/bench-omniglot")
    parser.add_argument("--max-minutes", type=float, default=40.0, help="meta-training budget of each setting")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each training/evaluation process")
    parser.add_argument("--meta-batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--n-query", type=int, default=15)
    parser.add_argument("--val-every", type=int, default=300)
    parser.add_argument("--val-episodes", type=int, default=100)
    parser.add_argument("--test-episodes", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    data = args.out / "omniglot-minimal.h5"
    subprocess.run([sys.executable, "scripts/prepare_data.py", "omniglot", "--source", *map(str, args.zips),
                    "--out", str(data), "--seed", str(args.seed), "--no-progress"], env=env, cwd=REPO, check=True)

    runs, started = {}, {}
    for name, k_shot in SETTINGS.items():
        run_dir = args.out / f"5w{k_shot}s"
        command = [sys.executable, "scripts/train.py", "--dataset", "omniglot", "--data", str(data), "--device", "cpu",
                   "--n-way", "5", "--k-shot", str(k_shot), "--n-query", str(args.n_query),
                   "--meta-batch", str(args.meta_batch), "--lr", str(args.lr), "--episodes", "1000000",
                   "--max-minutes", str(args.max_minutes), "--val-every", str(args.val_every),
                   "--val-episodes", str(args.val_episodes), "--seed", str(args.seed), "--out", str(run_dir)]
        started[name] = time.time()
        runs[name] = (run_dir, run_json(command, env, args.out / f"train-5w{k_shot}s.log"))
    summaries, wall = {}, {}
    for name, (run_dir, process) in runs.items():
        summaries[name] = last_json(process, f"training {name}", run_dir.with_name(f"train-{run_dir.name}.log"))
        wall[name] = time.time() - started[name]

    evals = {}
    for name, (run_dir, _) in runs.items():
        command = [sys.executable, "scripts/evaluate.py", "--checkpoint", str(run_dir / "best.pt"), "--split", "test",
                   "--episodes", str(args.test_episodes), "--device", "cpu", "--json"]
        evals[name] = run_json(command, env, args.out / f"eval-{run_dir.name}.log")
    results = {name: last_json(p, f"evaluating {name}", args.out / f"eval-{runs[name][0].name}.log")
               for name, p in evals.items()}

    build = json.loads(subprocess.run(
        [sys.executable, "-c", "import json,sys; from fewshot_l2l.data.hdf5 import HDF5Splits; "
         "print(json.dumps(HDF5Splits(sys.argv[1]).build))", str(data)],
        env=env, cwd=REPO, check=True, capture_output=True, text=True).stdout)
    alphabets = build["split_alphabets"]
    lines = [
        f"Omniglot minimal sets, alphabet-disjoint split: train {', '.join(alphabets['train'])} "
        f"({build['n_characters']['train']} characters, x4 with rotations); val {', '.join(alphabets['val'])}; "
        f"test {', '.join(alphabets['test'])} ({build['n_characters']['test']} characters). "
        f"{args.threads} CPU thread per process, both settings trained concurrently, "
        f"meta-batch {args.meta_batch}, lr {args.lr}, {args.n_query} queries per class, budget {args.max_minutes:g} min each.",
        "",
        f"| setting | test accuracy ({args.test_episodes} episodes, ± 95% CI) | meta-training episodes | meta-training time | best val acc |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in SETTINGS:
        r, s = results[name], summaries[name]
        lines.append(f"| {name} | {100 * r['accuracy']:.2f}% ± {100 * r['ci95']:.2f}% | {s['episodes']} "
                     f"| {s['elapsed_s'] / 60:.1f} min (process wall {wall[name] / 60:.1f} min) | {100 * s['best_val_acc']:.2f}% |")
    table = "\n".join(lines)
    print(table)
    text = json.dumps({"summaries": summaries, "wall_s": wall, "test": results, "build": build,
                       "args": {k: str(v) for k, v in vars(args).items()}, "table": table}, indent=1)
    atomic_write(args.out / "results.json", lambda tmp: tmp.write_text(text))


if __name__ == "__main__":
    main()
