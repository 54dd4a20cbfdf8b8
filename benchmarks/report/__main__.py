"""``python -m benchmarks.report``: see ``benchmarks.report.main``."""

from benchmarks.report.main import main

raise SystemExit(main())
