"""``python -m tl_funcnet.cli``: the same command line as ``tl-funcnet``."""

import sys

from . import main

sys.exit(main())
