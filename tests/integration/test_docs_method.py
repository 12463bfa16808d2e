"""docs/design.md's "Adding a method in 80 lines": its code block runs as written (in a fresh process, so the method
it registers stays there), trains through the one loop, reloads through the one loader and evaluates."""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def method_block() -> str:
    text = (REPO / "docs" / "design.md").read_text()
    section = text.split("### Adding a method in 80 lines", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_documented_method_is_short_and_runs(tmp_path):
    code = method_block()
    assert len(code.splitlines()) <= 80
    (tmp_path / "method.py").write_text(code)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "method.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"\d+\.\d\d% \+- \d+\.\d\d% \(95% CI, 10 episodes\)", result.stdout), result.stdout
    run = tmp_path / "runs" / "cosine-protonet"
    assert {"init.pt", "last.pt", "best.pt", "metrics.csv", "curves.png"} <= {p.name for p in run.iterdir()}
    assert len((run / "metrics.csv").read_text().splitlines()) == 3  # a header and two validations (6 episodes)
