"""Entry point for `ray job submit -- python jobs/extract.py ...`: the same arguments as `a2bs extract`."""

import sys

from a2bs.cli import main

if __name__ == "__main__":
    sys.exit(main(["extract", *sys.argv[1:]]))
