"""``python -m trainer.evaluation``: the evaluation CLI (``trainer.evaluation.cli``)."""

from __future__ import annotations

import sys

from trainer.evaluation.cli import main

sys.exit(main())
