"""``python -m extender.simulate ...``: the ``simulate`` command on its own."""

import sys

from extender.simulate.cli import main

sys.exit(main(["simulate", *sys.argv[1:]]))
