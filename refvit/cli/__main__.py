"""`python -m refvit.cli …`: the `refvit` command without installing its entry point."""

import sys

from . import main

sys.exit(main())
