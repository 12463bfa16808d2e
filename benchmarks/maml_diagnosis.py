"""What a trained MAML-family checkpoint does at test time, step by step (docs/results/maml_5shot_diagnosis.md).

For each checkpoint (``maml``, ``fomaml`` or ``metasgd``), on the same seeded test episodes as ``scripts/evaluate.py``:

* the accuracy after 1, 2, 3 and 5 inner steps (:func:`fewshot_l2l.evaluation.evaluate` with ``inner_steps``), the
  spread over episodes and the share of episodes below 60%;
* the mean support cross-entropy before and after each inner step, and the query accuracy after each, so that an
  inner step that overshoots shows as a support loss that rises again;
* per layer: the weight norm ``||W||`` and the relative size of the first inner step ``||lr * g|| / ||W||``, averaged
  over the episodes; for a bias-free convolution followed by batch norm the output does not change when ``W`` is
  scaled, while its gradient scales by the inverse, so ``||W||`` sets that layer's effective step.

    PYTHONPATH=. .venv/bin/python -m benchmarks.maml_diagnosis RUN_DIR/best.pt [...] --episodes 300

Prints one JSON line per checkpoint, then Markdown tables on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from fewshot_l2l.checkpoints import checkpoint_splits, load_checkpoint
from fewshot_l2l.data.episodes import EpisodeSampler
from fewshot_l2l.evaluation import evaluate
from fewshot_l2l.learner import EVAL_QUERY_BN
from fewshot_l2l.methods.base import EVAL_BATCH_SIZE

TEST_STEPS = (1, 2, 3, 5)
LOW_ACCURACY = 0.6  # an episode below this is counted as failed


def step_by_step(method, split, n_episodes: int, seed: int, max_steps: int) -> dict:
    """Support loss (mean cross-entropy) after 0..max_steps inner steps, query accuracy after each, and the first
    step's relative size per layer, averaged over ``n_episodes`` seeded episodes (those of :func:`evaluate`)."""
    sampler = EpisodeSampler(split, method.config.n_way, method.config.k_shot, method.config.n_query, seed=seed)
    names = method.net.names
    support_loss = torch.zeros(max_steps + 1, dtype=torch.float64)
    query_acc = torch.zeros(max_steps + 1, dtype=torch.float64)
    first_step = torch.zeros(len(names), dtype=torch.float64)
    done = 0
    while done < n_episodes:
        episode = sampler.sample(min(EVAL_BATCH_SIZE, n_episodes - done))
        for b in range(episode.n_episodes):
            x, y = episode.support_x[b], episode.support_y[b]
            with torch.enable_grad():
                learner = method.wrapper.clone()
                before = [learner.module._parameters[name].detach().clone() for name in names]
                for step in range(max_steps + 1):
                    logits = learner(x)
                    support_loss[step] += float(torch.nn.functional.cross_entropy(logits.detach(), y))
                    query = learner.module.query_logits(x, episode.query_x[b], EVAL_QUERY_BN)
                    query_acc[step] += float((query.argmax(1) == episode.query_y[b]).float().mean())
                    if step == max_steps:
                        break
                    learner.adapt(method.support_loss(logits, y), first_order=True)
                    if step == 0:
                        after = [learner.module._parameters[name].detach() for name in names]
                        first_step += torch.tensor([float((a - w).norm() / w.norm().clamp_min(1e-12))
                                                    for a, w in zip(after, before)], dtype=torch.float64)
        done += episode.n_episodes
    return {"support_loss": (support_loss / done).tolist(), "query_accuracy": (query_acc / done).tolist(),
            "first_step_relative": dict(zip(names, (first_step / done).tolist()))}


def diagnose(checkpoint: str, n_episodes: int, seed: int) -> dict:
    loaded = load_checkpoint(checkpoint, "cpu")
    method, config = loaded.method, loaded.config
    if not method.has_inner_loop or not hasattr(method, "wrapper"):
        raise ValueError(f"{checkpoint}: {config.method} is not of the MAML family")
    split = checkpoint_splits(checkpoint, loaded)["test"]
    accuracy = {}
    for steps in TEST_STEPS:
        result = evaluate(method, split, n_episodes=n_episodes, seed=seed, inner_steps=steps, progress=False)
        values = torch.tensor(result.accuracies)
        accuracy[steps] = {"accuracy": result.accuracy, "ci95": result.ci95, "episode_std": float(values.std()),
                           "below_60": float((values < LOW_ACCURACY).float().mean())}
    norms = {name: float(p.detach().norm()) for name, p in zip(method.net.names, method.net.parameters())}
    return {"checkpoint": checkpoint, "method": config.method, "k_shot": config.k_shot,
            "inner_loss": getattr(config, "inner_loss", None), "inner_lr": getattr(config, "inner_lr", None),
            "train_inner_steps": config.inner_steps, "episodes_trained": loaded.checkpoint["progress"]["state"]["episodes"],
            "accuracy": accuracy, "weight_norm": norms,
            **step_by_step(method, split, n_episodes, seed, max(TEST_STEPS))}


def tables(rows: list[dict]) -> str:
    lines = ["| checkpoint | method | inner loss | trained episodes | " + " | ".join(
        f"{s} step{'s' if s > 1 else ''}: acc (< 60%)" for s in TEST_STEPS) + " | support loss, steps 0-5 |",
             "|---" * (5 + len(TEST_STEPS)) + "|"]
    for row in rows:
        cells = [f"{100 * row['accuracy'][s]['accuracy']:.2f}% ± {100 * row['accuracy'][s]['ci95']:.2f} "
                 f"({100 * row['accuracy'][s]['below_60']:.1f}%)" for s in TEST_STEPS]
        losses = " → ".join(f"{v:.3f}" for v in row["support_loss"])
        lines.append(f"| {row['checkpoint']} | {row['method']} | {row['inner_loss']} | {row['episodes_trained']} | "
                     + " | ".join(cells) + f" | {losses} |")
    names = list(rows[0]["weight_norm"])
    lines += ["", "| checkpoint | " + " | ".join(names) + " |", "|---" * (1 + len(names)) + "|"]
    for row in rows:
        lines.append(f"| {row['checkpoint']} | " + " | ".join(
            f"{row['weight_norm'][n]:.3g} ({row['first_step_relative'][n]:.2g})" for n in names) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--episodes", type=int, default=300, help="test episodes (seeded: the same for every checkpoint)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = []
    for checkpoint in args.checkpoints:
        rows.append(diagnose(checkpoint, args.episodes, args.seed))
        print(json.dumps(rows[-1]), flush=True)
    print(tables(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
