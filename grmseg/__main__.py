"""``python -m grmseg``: see grmseg.cli."""

import sys

from grmseg.cli import main

sys.exit(main())
