#!/usr/bin/env python3
"""Every method on the same budget and test episodes, from a clone: the front end is fewshot_l2l/cli/compare.py."""
from fewshot_l2l.cli.compare import main

if __name__ == "__main__":
    main()
