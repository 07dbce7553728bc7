"""Process-level set-up done by ``flocid serve``."""

from __future__ import annotations

import resource

import pytest

from flocid.cli import WANTED_FDS, raise_fd_limit


def test_the_open_files_limit_is_raised_for_hundreds_of_containers() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip(f"the hard RLIMIT_NOFILE here is {hard}: nothing to raise to")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # systemd's default soft limit
    try:
        raise_fd_limit()
        now, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        expected = WANTED_FDS if hard == resource.RLIM_INFINITY else min(WANTED_FDS, hard)
        assert now == expected > 1024
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
