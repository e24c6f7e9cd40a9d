"""``python -m lopt.schema [params.yaml]``."""

from .validate import main

raise SystemExit(main())
