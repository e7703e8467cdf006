"""``python -m crystalformer``: the same as the ``crystalformer`` console script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
