"""Entry point for `ray job submit -- python jobs/tune.py ...`: the same arguments as `a2bs tune`."""

import sys

from a2bs.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
