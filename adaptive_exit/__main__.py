"""``python -m adaptive_exit``: the ``adaptive-exit`` command."""
import sys

from adaptive_exit.app.cli import main

sys.exit(main())
