#!/usr/bin/env python3
"""``fewshot-train`` from a clone: the command-line front end is fewshot_l2l/cli/train.py."""
from fewshot_l2l.cli.train import main

if __name__ == "__main__":
    main()
