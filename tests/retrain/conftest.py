from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from detector import cli
from tests.logging_state import restored_logging


@pytest.fixture
def run_cli() -> Iterator[Callable[..., int]]:
    """``detector.cli.main`` in-process; the logging it configures is undone afterwards."""
    with restored_logging():
        yield lambda *args: cli.main([str(a) for a in args])
