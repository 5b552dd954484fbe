"""Entry point for `ray job submit -- python jobs/evaluate.py ...`: the same arguments as `a2bs evaluate`."""

import sys

from a2bs.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
