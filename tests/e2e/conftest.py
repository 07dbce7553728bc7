from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_durability import Server, free_port


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """A real ``flocid serve`` process (executor none) on a free port, stopped after the test."""
    s = Server(tmp_path / "data", free_port())
    s.start()
    yield s
    if s.proc and s.proc.poll() is None:
        s.proc.kill()
        s.proc.wait()
