"""Library diagnostics (a one-time conversion, a long fine-tune) go to the ``avss`` logger.

Why a logger and not ``print``: the CLI has one output sink (``compressor.cli.output``) and routes
this logger into it; a Python user sees the same lines through ``logging`` or silences them there.
"""
from __future__ import annotations

import logging

LOGGER = logging.getLogger("avss")


def note(msg: str) -> None:
    LOGGER.info(msg)


def warn(msg: str) -> None:
    LOGGER.warning(msg)
