"""``python -m sencache.cli ...`` (what ``torchrun -m sencache.cli`` runs)."""

import sys

from sencache.cli import main

sys.exit(main())
