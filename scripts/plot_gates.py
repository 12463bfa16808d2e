#!/usr/bin/env python3
"""``fewshot-plot-gates`` from a clone: the command-line front end is fewshot_l2l/cli/plot_gates.py."""
from fewshot_l2l.cli.plot_gates import main

if __name__ == "__main__":
    main()
