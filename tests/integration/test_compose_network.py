"""flocid itself in a container on a Compose network: function containers join that network and
call flocid back at its address there (floci-lambda.md 1.7, Floci #765).

The rig stands in for ``docker compose up``: a user-defined network carrying Compose's labels, and a
container on it running ``python -m flocid serve`` from this checkout with the Docker socket mounted.
The container is the local Python runtime image used as a plain Debian userland; the host's own
Python (its prefix, and the venv when there is one) and the checkout are bind-mounted read-only at
the same paths, so no registry is needed. flocid listens on its default 127.0.0.1 inside: that the
test reaches it at its network address proves the listener flocid adds where containers connect.
Everything the rig creates is removed, also on failure.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import dns.message
import dns.query
import dns.rdatatype
import pytest

from tests.conftest import ROLE, client, make_zip
from tests.integration.conftest import docker, require_docker

pytestmark = pytest.mark.docker

IMAGE = "flocid.local/lambda/python:3.13"
REPO = Path(__file__).resolve().parents[2]
PORT = 4566
#: Output of a host Python that cannot run in the image's userland (the test then skips).
ABI_FAILURES = ("error while loading shared libraries", "GLIBC_", "ModuleNotFoundError", "ImportError",
                "exec format error", "no such file or directory")


@attrs.frozen
class Rig:
    network: str
    project: str
    container: str
    data_dir: str
    ip: str

    @property
    def endpoint(self) -> str:
        return f"http://{self.ip}:{PORT}"

    def logs(self) -> str:
        out = docker("logs", self.container)
        return out.stdout + out.stderr


def _python_mounts() -> list[str]:
    """Host paths to mount at the same place: the interpreter's prefix, the venv, the checkout."""
    base = Path(sys.base_prefix).resolve()
    if base in (Path("/usr"), Path("/usr/local"), Path("/")):
        pytest.skip(f"the host Python lives in {base}, which would shadow the image's own: "
                    "the rig needs a self-contained one (pyenv, a venv over one)")
    paths: list[Path] = []
    for p in (REPO, base, Path(sys.prefix).resolve()):
        if not any(p == q or q in p.parents for q in paths):
            paths.append(p)
    return [str(p) for p in paths]


def _remove_rig(container: str, data_dir: str, network: str) -> None:
    # A graceful stop lets flocid remove its function containers itself; then whatever is left.
    docker("stop", "-t", "10", container)
    left = docker("ps", "-aq", "--filter", f"label=flocid.instance={data_dir}").stdout.split()
    if left:
        docker("rm", "-f", "-v", *left)
    docker("rm", "-f", "-v", container)
    docker("network", "rm", network)


def _wait_ready(rig: Rig, deadline_s: float = 40.0) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(f"{rig.endpoint}/2015-03-31/functions/", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        state = docker("inspect", "--format", "{{.State.Running}}", rig.container).stdout.strip()
        if state != "true":
            logs = rig.logs()
            if any(s in logs for s in ABI_FAILURES):
                pytest.skip(f"the host Python does not run in {IMAGE}'s userland: {logs.strip()[-300:]}")
            pytest.fail(f"flocid's container exited before serving:\n{logs[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"flocid did not answer at {rig.endpoint} in {deadline_s:.0f} s:\n{rig.logs()[-3000:]}")
        time.sleep(0.2)


@pytest.fixture
def rig() -> Iterator[Rig]:
    require_docker((IMAGE,))
    mounts = _python_mounts()
    token = secrets.token_hex(3)
    project = f"flocidrig{token}"
    network = f"{project}_default"
    container = f"{project}-flocid-1"
    data_dir = f"/var/lib/flocid-{token}"
    made = docker("network", "create", "--label", "com.docker.compose.network=default",
                  "--label", f"com.docker.compose.project={project}", network)
    assert made.returncode == 0, made.stderr
    try:
        args = ["run", "-d", "--init", "--name", container, "--network", network,
                "--label", f"com.docker.compose.project={project}",
                "-v", "/var/run/docker.sock:/var/run/docker.sock"]
        for path in mounts:
            args += ["-v", f"{path}:{path}:ro"]
        args += ["-w", str(REPO), "-e", "FLOCI_ECR_BASE_URI=flocid.local", "-e", f"FLOCI_DATA_DIR={data_dir}",
                 "-e", f"FLOCI_PORT={PORT}", "-e", "PYTHONDONTWRITEBYTECODE=1",
                 "-e", f"FLOCI_SERVICES_LAMBDA_CONTAINER_NAME_PREFIX={project}",
                 "--entrypoint", sys.executable, IMAGE, "-m", "flocid", "serve"]
        started = docker(*args)
        assert started.returncode == 0, started.stderr
        attached = json.loads(docker("inspect", "--format", "{{json .NetworkSettings.Networks}}", container).stdout)
        ip = attached[network]["IPAddress"]
        r = Rig(network=network, project=project, container=container, data_dir=data_dir, ip=ip)
        _wait_ready(r)
        yield r
    finally:
        _remove_rig(container, data_dir, network)


FUNCTION = """
import os, socket, boto3

def handler(event, context):
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket="rig")
    s3.put_object(Bucket="rig", Key="from-function", Body=b"round trip")
    body = s3.get_object(Bucket="rig", Key="from-function")["Body"].read().decode()
    names = [f["FunctionName"] for f in boto3.client("lambda", endpoint_url=endpoint).list_functions()["Functions"]]
    return {"endpoint": endpoint, "body": body, "names": names,
            "floci_io": socket.gethostbyname("rig.s3.localhost.floci.io")}
"""


def test_functions_join_flocids_compose_network_and_call_it_back(rig: Rig) -> None:
    lam = client(rig.endpoint)
    lam.create_function(FunctionName="inside", Runtime="python3.13", Role=ROLE, Handler="index.handler",
                        Code={"ZipFile": make_zip({"index.py": FUNCTION})}, Timeout=30)
    out = lam.invoke(FunctionName="inside", Payload=b"{}")
    body: Any = json.loads(out["Payload"].read())
    assert "FunctionError" not in out, (body, rig.logs()[-3000:])
    # The function called flocid's API from inside, at flocid's address on the network: S3 and Lambda.
    assert body["endpoint"] == f"http://{rig.ip}:{PORT}"
    assert body["body"] == "round trip" and body["names"] == ["inside"]
    # localhost.floci.io names resolve to flocid there too (Docker's DNS forwards to flocid's responder).
    assert body["floci_io"] == rig.ip
    # What the function wrote is there for everyone.
    s3 = client(rig.endpoint, service="s3")
    assert s3.get_object(Bucket="rig", Key="from-function")["Body"].read() == b"round trip"

    ids = docker("ps", "-q", "--filter", f"label=flocid.instance={rig.data_dir}").stdout.split()
    assert len(ids) == 1, ids
    info = json.loads(docker("inspect", ids[0]).stdout)[0]
    assert list(info["NetworkSettings"]["Networks"]) == [rig.network]
    assert f"AWS_ENDPOINT_URL=http://{rig.ip}:{PORT}" in info["Config"]["Env"]
    assert info["HostConfig"]["Dns"] == [rig.ip]
    assert f"functions join Docker network {rig.network}" in rig.logs()

    # flocid's responder forwards what it does not own to its own resolver, Docker's 127.0.0.11 on a
    # user-defined network: the Compose name of flocid's container comes back with its address.
    query = dns.message.make_query(rig.container, dns.rdatatype.A)
    answer = dns.query.udp(query, rig.ip, port=53, timeout=5)
    assert [r.address for rrset in answer.answer for r in rrset] == [rig.ip], answer
