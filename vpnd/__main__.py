"""`python -m vpnd` is the same as the `vpnd` console script (the lab runs it this way)."""

from vpnd.cli import main

raise SystemExit(main())
