"""``python -m piccolod``: the same as the ``piccolod`` command."""

import sys

from piccolod.cli import main

sys.exit(main())
