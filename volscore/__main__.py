"""``python -m volscore`` (and ``torchrun -m volscore``) runs the command line."""

import sys

from volscore.cli import main

sys.exit(main())
