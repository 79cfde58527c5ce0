"""One module per ``vhdcore`` subcommand; see :mod:`vhdcore.cli`."""
