#!/usr/bin/env python3
"""Speed benchmarks from a clone (benchmarks/ is not installed with the package): benchmarks/cli.py."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
