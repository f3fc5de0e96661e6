"""`python -m crane_x7_vla.cli ...`: the same as `crane-x7-vla ...`."""

import sys

from crane_x7_vla.cli.main import main

sys.exit(main())
