"""``python -m agnet``: the same program as the ``agnet`` console script."""

import sys

from agnet.cli import main

sys.exit(main())
