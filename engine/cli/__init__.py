"""Headless commands. Each module here defines:

    add_arguments(parser) -> None   its argparse arguments
    run(args) -> int                the exit status

and imports only light modules at import time (heavy ones inside `run`). Its one-line help
is in `tui.cli.COMMANDS`, so that `loradeck --help` imports no command module.
"""
