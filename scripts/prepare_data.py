#!/usr/bin/env python3
"""``fewshot-prepare-data`` from a clone: the command-line front end is fewshot_l2l/cli/prepare_data.py."""
from fewshot_l2l.cli.prepare_data import main

if __name__ == "__main__":
    main()
