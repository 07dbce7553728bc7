"""The offline runtime images (``flocid images build``) against a tiny Runtime API of our own.

Each image runs in a real container with ``AWS_LAMBDA_RUNTIME_API`` pointing at a plain-thread HTTP
server on the Docker bridge gateway. The real runtime client inside must fetch ``/next`` (sent with
all of AWS's headers: awslambdaric 4.x crashes without the trace id), run the handler from the code
bind-mounted at ``/var/task`` and post ``/response`` or ``/error``; a broken import must be reported
on ``/init/error``. The pure parts (mirror discovery, runtime -> image) are tested without Docker.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import queue
import shutil
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from flocid.images.build import (
    RECIPES,
    local_image_for_runtime,
    parse_deb822_sources,
    parse_one_line_sources,
    pick_debian_mirror,
    select_recipes,
)

PYTHON_IMAGE = "flocid.local/lambda/python:3.13"
NODE_IMAGE = "flocid.local/lambda/nodejs:20"
PROVIDED_IMAGE = "flocid.local/lambda/provided:al2023"
ARN = "arn:aws:lambda:us-east-1:000000000000:function:images-test"
WAIT = 60.0  # seconds; a cold container answers in about one


# --- pure parts ------------------------------------------------------------------------------------


def test_mirror_from_deb822_skips_security_and_comments() -> None:
    text = (
        "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\n"
        "URIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
    )
    entries = parse_deb822_sources(text)
    assert entries == [
        ("http://mirror.example/debian", ("bookworm", "bookworm-updates")),
        ("http://mirror.example/debian-security", ("bookworm-security",)),
    ]
    assert pick_debian_mirror(reversed(entries)) == "http://mirror.example/debian"


def test_mirror_from_one_line_sources_with_options() -> None:
    text = (
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian/ bookworm main\n"
    )
    assert pick_debian_mirror(parse_one_line_sources(text)) == "http://one.example/debian"
    assert pick_debian_mirror(parse_deb822_sources("Types: deb\nEnabled: no\nURIs: http://x/\n")) is None


def test_runtime_to_image_and_selection() -> None:
    assert local_image_for_runtime("python3.13") == PYTHON_IMAGE
    assert local_image_for_runtime("nodejs20.x") == NODE_IMAGE
    assert local_image_for_runtime("provided.al2023") == PROVIDED_IMAGE
    assert local_image_for_runtime("java21") is None
    assert [r.name for r in select_recipes(["nodejs20.x", "python"])] == ["nodejs", "python"]
    assert len(select_recipes([])) == len(RECIPES)


# --- a tiny Runtime API ----------------------------------------------------------------------------


@dataclass
class Posted:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class RuntimeApi:
    """Hands out queued events on /next (then parks the caller) and records every POST."""

    events: queue.Queue[tuple[str, bytes]] = field(default_factory=queue.Queue)
    posted: queue.Queue[Posted] = field(default_factory=queue.Queue)
    next_headers: list[dict[str, str]] = field(default_factory=list)
    closing: threading.Event = field(default_factory=threading.Event)
    address: str = ""

    def push(self, payload: Any) -> str:
        request_id = str(uuid.uuid4())
        self.events.put((request_id, json.dumps(payload).encode()))
        return request_id

    def wait_post(self, timeout: float = WAIT) -> Posted:
        try:
            return self.posted.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the runtime client posted nothing within {timeout}s") from None


def _handler_class(api: RuntimeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path != "/2018-06-01/runtime/invocation/next":
                self._reply(404, b'{"errorType":"NotFound"}')
                return
            api.next_headers.append(dict(self.headers))
            while not api.closing.is_set():
                try:
                    request_id, body = api.events.get(timeout=0.2)
                except queue.Empty:
                    continue
                self._reply(200, body, {
                    "Lambda-Runtime-Aws-Request-Id": request_id,
                    "Lambda-Runtime-Deadline-Ms": str(int(time.time() * 1000) + 30_000),
                    "Lambda-Runtime-Invoked-Function-Arn": ARN,
                    "Lambda-Runtime-Trace-Id":
                        "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
                })
                return
            self.close_connection = True

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            api.posted.put(Posted(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            self._reply(202, b'{"status":"OK"}')

    return Handler


def _bridge_gateway() -> str:
    """The Docker bridge gateway address (where containers reach the host)."""
    out = subprocess.run(
        ["docker", "network", "inspect", "bridge", "--format",
         '{{range .IPAM.Config}}{{.Gateway}}|{{.Subnet}};{{end}}{{index .Options "com.docker.network.bridge.name"}}'],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    configs, _, bridge = out.rpartition(";")
    gateway, _, subnet = configs.split(";")[0].partition("|")
    if gateway:
        return gateway
    try:  # the bridge interface's own address (SIOCGIFADDR)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", (bridge or "docker0").encode()[:15]))
        return socket.inet_ntoa(packed[20:24])
    except OSError:
        return str(next(ipaddress.ip_network(subnet.strip()).hosts()))


def _docker_problem() -> str | None:
    if shutil.which("docker") is None:
        return "the docker CLI is not installed (scripts/ensure-docker installs and starts Docker)"
    try:
        proc = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                              capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "dockerd does not answer within 20s"
    if proc.returncode != 0:
        return f"dockerd is not reachable: {proc.stderr.strip()[:200]} (start it with scripts/ensure-docker)"
    return None


def _require(condition_problem: str | None) -> None:
    if condition_problem is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true and {condition_problem}")
    pytest.skip(condition_problem)


@pytest.fixture(scope="module")
def gateway() -> str:
    _require(_docker_problem())
    return _bridge_gateway()


@pytest.fixture
def runtime_api(gateway: str) -> Iterator[RuntimeApi]:
    api = RuntimeApi()
    server = ThreadingHTTPServer((gateway, 0), _handler_class(api))
    server.daemon_threads = True
    api.address = f"{gateway}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="runtime-api", daemon=True)
    thread.start()
    try:
        yield api
    finally:
        api.closing.set()
        server.shutdown()
        server.server_close()


@dataclass
class Container:
    name: str

    def logs(self) -> str:
        proc = subprocess.run(["docker", "logs", self.name], capture_output=True, text=True)
        return (proc.stdout + proc.stderr)[-3000:]


@pytest.fixture
def run_container(runtime_api: RuntimeApi) -> Iterator[Any]:
    started: list[Container] = []

    def run(image: str, code: Path, handler: str, *, task_dir: str = "/var/task",
            workdir: str | None = None) -> Container:
        inspect = subprocess.run(["docker", "image", "inspect", image], capture_output=True)
        _require(None if inspect.returncode == 0 else
                 f"image {image} is missing: build it with `flocid images build`")
        name = f"flocid-images-test-{uuid.uuid4().hex[:10]}"
        code.chmod(0o755)
        subprocess.run(
            ["docker", "run", "-d", "--name", name,
             "-e", f"AWS_LAMBDA_RUNTIME_API={runtime_api.address}",
             "-e", "AWS_LAMBDA_FUNCTION_NAME=images-test", "-e", "AWS_LAMBDA_FUNCTION_VERSION=$LATEST",
             "-e", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE=128", "-e", "AWS_REGION=us-east-1",
             "-e", "AWS_DEFAULT_REGION=us-east-1", "-e", f"_HANDLER={handler}",
             *(["--workdir", workdir] if workdir else []),
             "-v", f"{code}:{task_dir}:ro", image, handler],
            check=True, capture_output=True,
        )
        container = Container(name)
        started.append(container)
        return container

    try:
        yield run
    finally:
        for container in started:
            subprocess.run(["docker", "rm", "-f", container.name], capture_output=True)


def _expect(api: RuntimeApi, container: Container, path: str) -> Posted:
    try:
        posted = api.wait_post()
    except AssertionError as exc:
        raise AssertionError(f"{exc}; container output:\n{container.logs()}") from None
    assert posted.path == path, f"{posted.path} {posted.body[:500]!r}\n{container.logs()}"
    return posted


# --- the images ------------------------------------------------------------------------------------


@pytest.mark.docker
def test_python_image_runs_awslambdaric(tmp_path: Path, runtime_api: RuntimeApi, run_container: Any) -> None:
    (tmp_path / "app.py").write_text(
        "import sys\n"
        "def handler(event, context):\n"
        "    if event.get('fail'):\n"
        "        raise ValueError('asked to fail')\n"
        "    return {'echo': event, 'request_id': context.aws_request_id,\n"
        "            'arn': context.invoked_function_arn,\n"
        "            'remaining_ok': context.get_remaining_time_in_millis() > 0,\n"
        "            'python': sys.version.split()[0]}\n"
    )
    ok_id = runtime_api.push({"hello": "wörld", "n": 1})
    fail_id = runtime_api.push({"fail": True})
    container = run_container(PYTHON_IMAGE, tmp_path, "app.handler")

    ok = _expect(runtime_api, container, f"/2018-06-01/runtime/invocation/{ok_id}/response")
    result = ok.json()
    assert result["echo"] == {"hello": "wörld", "n": 1}
    assert result["request_id"] == ok_id
    assert result["arn"] == ARN
    assert result["remaining_ok"] is True
    assert result["python"].startswith("3.13.")

    err = _expect(runtime_api, container, f"/2018-06-01/runtime/invocation/{fail_id}/error")
    body = err.json()
    assert body["errorType"] == "ValueError"
    assert body["errorMessage"] == "asked to fail"
    assert any("asked to fail" in line or "app.py" in line for line in body["stackTrace"])
    assert runtime_api.next_headers, "the client never called /next"


@pytest.mark.docker
def test_python_image_reports_import_failure(
    tmp_path: Path, runtime_api: RuntimeApi, run_container: Any
) -> None:
    (tmp_path / "broken.py").write_text("import not_a_module_xyz\n")
    runtime_api.push({})
    container = run_container(PYTHON_IMAGE, tmp_path, "broken.handler")
    posted = _expect(runtime_api, container, "/2018-06-01/runtime/init/error")
    body = posted.json()
    assert body["errorType"] == "Runtime.ImportModuleError"
    assert "not_a_module_xyz" in body["errorMessage"]
    assert posted.headers.get("lambda-runtime-function-error-type") == "Runtime.ImportModuleError"


@pytest.mark.docker
def test_nodejs_image_runs_async_handler(tmp_path: Path, runtime_api: RuntimeApi, run_container: Any) -> None:
    (tmp_path / "index.mjs").write_text(
        "export const handler = async (event, context) => {\n"
        "  if (event.fail) { throw new TypeError('asked to fail'); }\n"
        "  return { echo: event, requestId: context.awsRequestId, arn: context.invokedFunctionArn,\n"
        "           remainingOk: context.getRemainingTimeInMillis() > 0, node: process.version };\n"
        "};\n"
    )
    ok_id = runtime_api.push({"hello": "wörld"})
    fail_id = runtime_api.push({"fail": True})
    container = run_container(NODE_IMAGE, tmp_path, "index.handler")

    result = _expect(runtime_api, container, f"/2018-06-01/runtime/invocation/{ok_id}/response").json()
    assert result == {"echo": {"hello": "wörld"}, "requestId": ok_id, "arn": ARN,
                      "remainingOk": True, "node": result["node"]}
    assert result["node"].startswith("v20.")

    body = _expect(runtime_api, container, f"/2018-06-01/runtime/invocation/{fail_id}/error").json()
    assert body["errorType"] == "TypeError"
    assert body["errorMessage"] == "asked to fail"
    assert isinstance(body["trace"], list) and body["trace"]


@pytest.mark.docker
def test_nodejs_image_runs_callback_handler(
    tmp_path: Path, runtime_api: RuntimeApi, run_container: Any
) -> None:
    (tmp_path / "cb.js").write_text(
        "exports.handler = function (event, context, callback) {\n"
        "  setTimeout(() => callback(null, { doubled: event.n * 2 }), 5);\n"
        "};\n"
    )
    request_id = runtime_api.push({"n": 21})
    container = run_container(NODE_IMAGE, tmp_path, "cb.handler")
    posted = _expect(runtime_api, container, f"/2018-06-01/runtime/invocation/{request_id}/response")
    assert posted.json() == {"doubled": 42}


@pytest.mark.docker
def test_nodejs_image_reports_import_failure(
    tmp_path: Path, runtime_api: RuntimeApi, run_container: Any
) -> None:
    (tmp_path / "broken.js").write_text("require('not-a-module-xyz');\nexports.handler = async () => 1;\n")
    runtime_api.push({})
    container = run_container(NODE_IMAGE, tmp_path, "broken.handler")
    body = _expect(runtime_api, container, "/2018-06-01/runtime/init/error").json()
    assert body["errorType"] == "Runtime.ImportModuleError"
    assert "not-a-module-xyz" in body["errorMessage"]


PROVIDED_BOOTSTRAP = """#!/bin/sh
set -eu
api="http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime"
while true; do
    headers=$(mktemp)
    event=$(curl -sS -D "$headers" "$api/invocation/next")
    id=$(grep -i '^lambda-runtime-aws-request-id:' "$headers" | cut -d' ' -f2 | tr -d '\\r')
    curl -sS -o /dev/null -X POST --data "{\\"handler\\":\\"$_HANDLER\\",\\"event\\":$event}" \\
        "$api/invocation/$id/response"
done
"""


@pytest.mark.docker
def test_provided_image_runs_the_bootstrap(tmp_path: Path, runtime_api: RuntimeApi, run_container: Any) -> None:
    bootstrap = tmp_path / "bootstrap"
    bootstrap.write_text(PROVIDED_BOOTSTRAP)
    bootstrap.chmod(0o755)
    request_id = runtime_api.push({"k": [1, 2]})
    container = run_container(PROVIDED_IMAGE, tmp_path, "function.handler")
    posted = _expect(runtime_api, container, f"/2018-06-01/runtime/invocation/{request_id}/response")
    assert posted.json() == {"handler": "function.handler", "event": {"k": [1, 2]}}


@pytest.mark.docker
def test_provided_image_without_bootstrap_reports_init_error(
    tmp_path: Path, runtime_api: RuntimeApi, run_container: Any
) -> None:
    (tmp_path / "not-a-bootstrap.txt").write_text("x")
    container = run_container(PROVIDED_IMAGE, tmp_path, "function.handler")
    body = _expect(runtime_api, container, "/2018-06-01/runtime/init/error").json()
    assert body["errorType"] == "Runtime.InvalidEntrypoint"
    assert "/var/task/bootstrap" in body["errorMessage"]


@pytest.mark.docker
@pytest.mark.parametrize("image", [PYTHON_IMAGE, NODE_IMAGE, PROVIDED_IMAGE])
def test_image_config_matches_the_aws_contract(gateway: str, image: str) -> None:
    proc = subprocess.run(["docker", "image", "inspect", image, "--format", "{{json .Config}}"],
                          capture_output=True, text=True)
    _require(None if proc.returncode == 0 else f"image {image} is missing: run `flocid images build`")
    config = json.loads(proc.stdout)
    env = dict(item.split("=", 1) for item in config["Env"])
    assert config["Entrypoint"] == ["/lambda-entrypoint.sh"]
    assert config["WorkingDir"] == "/var/task"
    assert env["LAMBDA_TASK_ROOT"] == "/var/task"
    assert env["LAMBDA_RUNTIME_DIR"] == "/var/runtime"
    assert len(config["Cmd"]) == 1
    # Without a Runtime API the entrypoint refuses loudly (AWS's would start its emulator).
    run = subprocess.run(["docker", "run", "--rm", image], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "AWS_LAMBDA_RUNTIME_API" in run.stderr


@pytest.mark.docker
@pytest.mark.parametrize(("image", "filename", "source"), [
    (PYTHON_IMAGE, "app.py", "import os\ndef main(event, context):\n    return {'cwd': os.getcwd()}\n"),
    (NODE_IMAGE, "app.js", "exports.main = async () => ({ cwd: process.cwd() });\n"),
])
def test_image_function_working_directory(
    tmp_path: Path, runtime_api: RuntimeApi, run_container: Any, image: str, filename: str, source: str
) -> None:
    """ImageConfig.WorkingDirectory (docker's WorkingDir) is where the handler is looked up."""
    (tmp_path / filename).write_text(source)
    request_id = runtime_api.push({})
    container = run_container(image, tmp_path, "app.main", task_dir="/opt/app", workdir="/opt/app")
    posted = _expect(runtime_api, container, f"/2018-06-01/runtime/invocation/{request_id}/response")
    assert posted.json() == {"cwd": "/opt/app"}
