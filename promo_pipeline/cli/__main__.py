"""`python -m promo_pipeline.cli`: the `promo` command, for a venv without its scripts."""

import sys

from promo_pipeline.cli import main

sys.exit(main())
