"""``python -m lpc_geom.experiments.compare``: the comparison's command line."""

import sys

from lpc_geom.experiments.compare.command import cli

sys.exit(cli(sys.argv[1:]))
