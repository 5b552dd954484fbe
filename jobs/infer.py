"""Entry point for `ray job submit -- python jobs/infer.py ...`: the same arguments as `a2bs infer`."""

import sys

from a2bs.cli import main

if __name__ == "__main__":
    sys.exit(main(["infer", *sys.argv[1:]]))
