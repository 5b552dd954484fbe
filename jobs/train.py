"""Entry point for `ray job submit -- python jobs/train.py ...`: the same arguments as `a2bs train`."""

import sys

from a2bs.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
