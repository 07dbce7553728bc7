"""The integration tier needs a real dockerd and the local runtime images.

Without them a test skips and says why; under ``CI=true`` it fails instead (``scripts/test``
installs and starts Docker and builds the images, so CI never lacks them).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
IMAGES = ("flocid.local/lambda/python:3.13", "flocid.local/lambda/nodejs:20",
          "flocid.local/lambda/provided:al2023")


def docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)


def require_docker(images: tuple[str, ...] = IMAGES) -> None:
    reason = None
    if shutil.which("docker") is None:
        reason = "the docker CLI is not installed"
    elif docker("info").returncode != 0:
        reason = "dockerd is not reachable (run scripts/ensure-docker)"
    else:
        missing = [i for i in images if docker("image", "inspect", i).returncode != 0]
        if missing:
            reason = f"runtime images missing: {', '.join(missing)} (run `flocid images build`)"
    if reason:
        if IN_CI:
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(f"integration tier skipped: {reason}")
