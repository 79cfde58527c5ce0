"""``python -m vhdcore``: the same as the ``vhdcore`` script."""

from .cli import main

raise SystemExit(main())
