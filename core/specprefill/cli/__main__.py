"""``python -m specprefill.cli``: the same as the ``specprefill`` console script."""

import sys

from specprefill.cli.app import main

sys.exit(main())
