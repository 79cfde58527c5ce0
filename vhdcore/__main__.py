"""``python -m vhdcore``: the same as the ``vhdcore`` script."""

import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while the CLI's own modules load
    sys.stderr.write("vhdcore: interrupted\n")
    raise SystemExit(130) from None

raise SystemExit(main())
