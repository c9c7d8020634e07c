"""``python -m cupre.cli`` (e.g. under ``torchrun``)."""

import sys

from cupre.cli import main

sys.exit(main())
