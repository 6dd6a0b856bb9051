"""One module per ``scfm`` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``."""
