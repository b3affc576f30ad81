"""`python -m pipelines ...` from the pack folder: see cli.py."""

import sys

from .cli import main

sys.exit(main())
