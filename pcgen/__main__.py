"""`python -m pcgen`: the same as the `pcgen` command."""

import sys

from pcgen.cli import main

sys.exit(main())
