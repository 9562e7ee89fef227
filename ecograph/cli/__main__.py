"""`python -m ecograph.cli` runs the command line (as the `ecograph` script does)."""

import sys

from ecograph.cli.main import main

sys.exit(main())
