"""``python -m prunekit.cli``: the same as the ``prunekit`` command."""

import sys

from prunekit.cli import main

sys.exit(main())
