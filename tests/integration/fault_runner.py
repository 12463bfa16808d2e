"""Run a training command in this process with one injected fault (for tests/integration/test_faults.py).

    python fault_runner.py {train|train_optimizer} ARGS...

``train`` trains on the tiny glyph splits of tests/conftest.py (so it starts in a
second). The fault comes from the environment variable ``FAULT`` (JSON); none: an
uninterrupted run. Faults are injected at exact points, so that the tests are
deterministic; the process, its signals and its exit are real:

* ``{"signal": 15, "after_update": 5, "times": 1}`` - send ourselves the signal
  ``times`` times right after the 5th meta-update;
* ``{"kill_before_save": 2}`` - SIGKILL right before the 2nd checkpoint save
  (after its metrics row was written);
* ``{"kill_writing": "last.pt", "at_save": 2}`` - SIGKILL in the middle of the
  atomic write of last.pt at the 2nd save (best.pt, if improved, is written);
* ``{"nonfinite_from_update": 3, "nonfinite_until_update": 5}`` - the meta-loss of
  those meta-updates (1-based, inclusive) is NaN;
* ``{"ready_file": PATH}`` - create PATH after the first meta-update (a test then
  signals the process from outside).
"""

import json
import os
import signal
import sys
from pathlib import Path

import fewshot_l2l.runs.folder as runs
import fewshot_l2l.training as training
import fewshot_l2l.optim.rule_training as optimizer_training
from fewshot_l2l.data.glyphs import make_glyph_splits
from fewshot_l2l.files import AtomicFile

command, argv = sys.argv[1], sys.argv[2:]
fault = json.loads(os.environ.get("FAULT", "{}"))
loop = training if command == "train" else optimizer_training

if command == "train":
    tiny = make_glyph_splits({"train": 20, "val": 8, "test": 8}, images_per_class=6, image_size=16, seed=3)
    training.load_splits = lambda dataset, data=None, seed=0, rotate="auto": tiny
    # curves.png is not under test here, and drawing it (matplotlib) is a third of a tiny run's time.
    training.require_matplotlib = training.plot_training_curves = lambda *args, **kwargs: None

updates = [0]
original_update = loop.meta_update


def meta_update(model, optimizer, loss, grad_clip, **kwargs):
    updates[0] += 1
    if fault.get("nonfinite_from_update", 10**9) <= updates[0] <= fault.get("nonfinite_until_update", 10**9):
        loss = loss * float("nan")
    stepped = original_update(model, optimizer, loss, grad_clip, **kwargs)
    if updates[0] == fault.get("after_update"):
        for _ in range(fault.get("times", 1)):
            os.kill(os.getpid(), fault["signal"])
    if updates[0] == 1 and "ready_file" in fault:
        Path(fault["ready_file"]).write_text(str(os.getpid()))
    return stepped


loop.meta_update = meta_update

saves = [0]
original_save = runs.RunFolder.save


def save(self, *args, **kwargs):
    saves[0] += 1
    if saves[0] == fault.get("kill_before_save"):
        os.kill(os.getpid(), signal.SIGKILL)
    return original_save(self, *args, **kwargs)


runs.RunFolder.save = save
original_torch_save = runs.atomic_torch_save


def atomic_torch_save(obj, path):
    if Path(path).name == fault.get("kill_writing") and saves[0] == fault.get("at_save"):
        target = AtomicFile(path)
        target.tmp_path.write_bytes(b"PK\x03\x04 half a checkpoint")
        os.kill(os.getpid(), signal.SIGKILL)
    return original_torch_save(obj, path)


runs.atomic_torch_save = atomic_torch_save

if command == "train":
    from fewshot_l2l.cli.train import main
else:
    from fewshot_l2l.cli.train_optimizer import main
main(argv)
