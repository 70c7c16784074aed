from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest
import structlog

from detector import cli


@pytest.fixture
def run_cli() -> Iterator[Callable[..., int]]:
    """``detector.cli.main`` in-process; the logging it configures is undone afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield lambda *args: cli.main([str(a) for a in args])
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()
