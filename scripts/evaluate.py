#!/usr/bin/env python3
"""``fewshot-evaluate`` from a clone: the command-line front end is fewshot_l2l/cli/evaluate.py."""
from fewshot_l2l.cli.evaluate import main

if __name__ == "__main__":
    main()
