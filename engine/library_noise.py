"""Messages of the libraries below us that are noise to a loradeck user, kept out of their logs.

    silence_library_noise()   # once, at the start of a process (the engine, a command)

transformers 5 warns at import that its image processors would like torchvision and fall
back to PIL: true, harmless (loradeck's captioners and pipelines work with the PIL
ones), and it reached engine.log and every command's output. A logging filter drops just
those lines; every other warning of the library still shows. Light module: stdlib only,
nothing is imported from the library itself.
"""
from __future__ import annotations

import logging

# (logger name, text that marks the message) of each known harmless message
NOISE = (
    ("transformers.utils.import_utils", "requires torchvision (not installed)"),
)


class _DropMarked(logging.Filter):
    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker

    def filter(self, record: logging.LogRecord) -> bool:
        return self.marker not in record.getMessage()


def silence_library_noise() -> None:
    for logger_name, marker in NOISE:
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, _DropMarked) and f.marker == marker for f in logger.filters):
            logger.addFilter(_DropMarked(marker))
