"""Entry point for `ray job submit -- python jobs/build.py ...`: the same arguments as `a2bs build`."""

import sys

from a2bs.cli import main

if __name__ == "__main__":
    sys.exit(main(["build", *sys.argv[1:]]))
