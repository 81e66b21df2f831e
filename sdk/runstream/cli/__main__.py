"""``python -m runstream.cli``: the same as the ``runstream`` command."""

import sys

from runstream.cli.main import main

sys.exit(main())
