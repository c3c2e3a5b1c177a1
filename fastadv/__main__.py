"""`python -m fastadv` (also what `torchrun -m fastadv` runs)."""

import sys

from fastadv.cli import main

sys.exit(main())
