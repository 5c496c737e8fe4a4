"""``python -m attnviz`` (also what ``torchrun -m attnviz`` runs)."""

import sys

from .cli import main

sys.exit(main())
