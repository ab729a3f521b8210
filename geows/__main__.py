"""``python -m geows``: the same as the ``geows`` command."""

import sys

from geows.cli import main

sys.exit(main())
