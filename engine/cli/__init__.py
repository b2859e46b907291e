"""Headless commands. Each module here defines:

    HELP: str                       one line for `loradeck --help`
    add_arguments(parser) -> None   its argparse arguments
    run(args) -> int                the exit status

and imports only light modules at import time (heavy ones inside `run`).
"""
