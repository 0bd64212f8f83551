import sys

from lpc_geom.cli import main

sys.exit(main())
