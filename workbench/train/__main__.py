"""`python -m workbench.train RECIPE --config cfg.json [--set KEY=VALUE] [--resume]`."""

import sys

from .recipes import main

if __name__ == "__main__":
    sys.exit(main())
