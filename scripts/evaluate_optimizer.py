#!/usr/bin/env python3
"""``fewshot-evaluate-optimizer`` from a clone: the command-line front end is fewshot_l2l/cli/evaluate_optimizer.py."""
from fewshot_l2l.cli.evaluate_optimizer import main

if __name__ == "__main__":
    main()
