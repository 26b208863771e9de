"""``python -m tl_funcnet``: the same command line as ``tl-funcnet``."""

import sys

from .cli import main

sys.exit(main())
