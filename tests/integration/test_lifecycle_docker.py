"""A real ``flocid serve`` with the Docker executor: orphans of a ``kill -9`` are reaped at the next
start, SIGTERM leaves no container behind, and a missing Docker is one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PY_HANDLER, ROLE, client
from tests.e2e.test_durability import free_port
from tests.integration.conftest import docker as _docker
from tests.integration.conftest import require_docker as _require_docker

pytestmark = pytest.mark.docker


@pytest.fixture(autouse=True)
def _docker_ready() -> None:
    _require_docker()


def flocid_containers(data_dir: Path) -> list[str]:
    out = _docker("ps", "-aq", "--filter", "label=flocid.managed=1",
                  "--filter", f"label=flocid.instance={data_dir.resolve()}")
    return out.stdout.split()


def start(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FLOCI_ECR_BASE_URI": "flocid.local", "FLOCI_SERVICES_LAMBDA_EXECUTOR": "docker"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flocid", "serve", "--port", str(port), "--data-dir", str(data_dir)],
        stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env,
    )
    lam = client(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            lam.list_functions()
            return proc
        except Exception:
            time.sleep(0.1)
    raise AssertionError("flocid serve did not start:\n" + log.read_text())


def test_kill9_orphans_are_reaped_and_sigterm_leaves_none(tmp_path: Path) -> None:
    data, port, log = tmp_path / "data", free_port(), tmp_path / "serve.log"
    proc = start(data, port, log)
    try:
        lam = client(f"http://127.0.0.1:{port}")
        lam.create_function(FunctionName="warm", Runtime="python3.13", Role=ROLE, Handler="index.handler",
                            Code={"ZipFile": PY_HANDLER})
        out = lam.invoke(FunctionName="warm", Payload=b"{}")
        assert json.loads(out["Payload"].read())["ok"] is True
        assert len(flocid_containers(data)) == 1, "one warm container"
        proc.kill()
        proc.wait(10)
        assert len(flocid_containers(data)) == 1, "kill -9 cannot clean up: the container is an orphan"
        proc = start(data, port, log)
        deadline = time.monotonic() + 20
        while flocid_containers(data) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert flocid_containers(data) == [], "the restarted daemon reaps its predecessor's orphans"
        out = lam.invoke(FunctionName="warm", Payload=b"{}")
        assert json.loads(out["Payload"].read())["ok"] is True
        assert len(flocid_containers(data)) == 1
        t0 = time.monotonic()
        proc.terminate()
        assert proc.wait(20) == 0
        assert time.monotonic() - t0 < 10
        assert flocid_containers(data) == [], "SIGTERM leaves no container behind"
    finally:
        if proc.poll() is None:
            proc.kill()
        for cid in flocid_containers(data):
            _docker("rm", "-f", cid)


def test_no_docker_is_one_line_and_invocations_name_the_fix(tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "serve.log"
    env_docker = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = "unix:///nonexistent/docker.sock"
    try:
        proc = start(tmp_path / "data", port, log)
    finally:
        if env_docker is None:
            os.environ.pop("DOCKER_HOST")
        else:
            os.environ["DOCKER_HOST"] = env_docker
    try:
        lam = client(f"http://127.0.0.1:{port}")
        lam.create_function(FunctionName="f", Runtime="python3.13", Role=ROLE, Handler="index.handler",
                            Code={"ZipFile": PY_HANDLER})
        t0 = time.monotonic()
        from botocore.exceptions import ClientError

        with pytest.raises(ClientError) as info:
            lam.invoke(FunctionName="f", Payload=b"{}")
        assert time.monotonic() - t0 < 10, "never a hang"
        msg = info.value.response["Error"]["Message"]
        assert "Docker is not reachable" in msg and "start dockerd" in msg, msg
    finally:
        proc.terminate()
        proc.wait(20)
    lines = [ln for ln in log.read_text().splitlines() if "Docker is not reachable" in ln]
    assert len(lines) == 1, log.read_text()
    assert "Traceback" not in log.read_text()
