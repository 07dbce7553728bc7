"""The Docker executor against a real dockerd and a runtime image (integration tier).

A tiny Runtime API (trio + h11) served by the test hands one event to the image's real runtime
client (awslambdaric for python) and collects its answer.

Needs dockerd and ``flocid.local/lambda/python:3.13`` (``flocid images build``); override the image
with ``FLOCID_TEST_PYTHON_IMAGE``. When either is missing the tests skip and say why; under
``CI=true`` they fail instead.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import attrs
import h11
import pytest
import trio

from flocid.config import Settings
from flocid.executors import docker as docker_executor
from flocid.executors.base import EnvironmentSpec, ExecutorError, ExecutorUnavailable
from flocid.executors.docker import (
    INSTANCE_LABEL,
    MANAGED_LABEL,
    DockerExecutor,
    code_volume_name,
    image_for_runtime,
    open_docker_executor,
)
from flocid.lambda_.models import FunctionConfig

pytestmark = pytest.mark.docker

IN_CI = os.environ.get("CI", "").lower() == "true"
ECR_BASE = os.environ.get("FLOCI_ECR_BASE_URI", "flocid.local")
PYTHON_IMAGE = os.environ.get("FLOCID_TEST_PYTHON_IMAGE", image_for_runtime("python3.13", ECR_BASE))
TRACE_ID = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"


def unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true and {reason}")
    print(f"SKIP: {reason}", file=sys.stderr)
    pytest.skip(reason)


def docker_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", container_name_prefix="flocid-h4test", ecr_base_uri=ECR_BASE)


async def _docker_problem() -> str | None:
    async with open_docker_executor(Settings()) as ex:
        try:
            await ex.check()
        except ExecutorUnavailable as exc:
            return f"{exc} (try `bash scripts/ensure-docker`)"
    return None


@pytest.fixture(scope="module")
def docker_ready() -> None:
    # Checked outside trio's run: a skip raised inside pytest-trio's nursery loses its reason.
    problem = trio.run(_docker_problem)
    if problem:
        unavailable(problem)


def need_image(image: str) -> str:
    if docker_cli("image", "inspect", image).returncode != 0:
        unavailable(f"image {image} is absent: build it with `flocid images build`")
    return image


@pytest.fixture
def python_image(docker_ready: None) -> str:
    return need_image(PYTHON_IMAGE)


@pytest.fixture
def provided_image(docker_ready: None) -> str:
    return need_image(image_for_runtime("provided.al2023", ECR_BASE))


@pytest.fixture
async def executor(docker_ready: None, settings: Settings) -> AsyncIterator[DockerExecutor]:
    async with open_docker_executor(settings) as ex:
        await ex.check()
        yield ex


# -- a minimal Runtime API: one event, then park ---------------------------------------------


class TinyRuntimeApi:
    def __init__(self, event: bytes, request_id: str = "req-1") -> None:
        self.event = event
        self.request_id = request_id
        self.handed_out = False
        self.next_headers: list[dict[str, str]] = []
        self.response: bytes | None = None
        self.error: tuple[str, bytes] | None = None
        self.done = trio.Event()
        self.parked = trio.Event()

    async def serve(self, host: str, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host=host)
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(port)
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        async with stream:
            while True:
                req, body = await self._read_request(conn, stream)
                if req is None:
                    return
                status, payload, headers = await self._route(req, body)
                data = conn.send(h11.Response(status_code=status, headers=headers))
                data = (
                    (data or b"")
                    + (conn.send(h11.Data(data=payload)) or b"")
                    + (conn.send(h11.EndOfMessage()) or b"")
                )
                await stream.send_all(data)
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()

    async def _read_request(self, conn: h11.Connection, stream: trio.SocketStream) -> tuple[Any, bytes]:
        req: Any = None
        body = b""
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return None, b""
                conn.receive_data(data)
            elif isinstance(ev, h11.Request):
                req = ev
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                return req, body
            elif isinstance(ev, h11.ConnectionClosed):
                return None, b""

    async def _route(self, req: h11.Request, body: bytes) -> tuple[int, bytes, list[tuple[str, str]]]:
        path = req.target.decode()
        ok = [("Content-Type", "application/json"), ("Content-Length", "15")]
        if path == "/2018-06-01/runtime/invocation/next":
            self.next_headers.append({k.decode(): v.decode() for k, v in req.headers})
            if self.handed_out:
                self.parked.set()
                await trio.sleep_forever()  # parked until the container goes away
            self.handed_out = True
            deadline = str(int(time.time() * 1000) + 60_000)
            return (
                200,
                self.event,
                [
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(self.event))),
                    ("Lambda-Runtime-Aws-Request-Id", self.request_id),
                    ("Lambda-Runtime-Deadline-Ms", deadline),
                    (
                        "Lambda-Runtime-Invoked-Function-Arn",
                        "arn:aws:lambda:us-east-1:000000000000:function:h4fn",
                    ),
                    ("Lambda-Runtime-Trace-Id", TRACE_ID),
                ],
            )
        if path == f"/2018-06-01/runtime/invocation/{self.request_id}/response":
            self.response = body
            self.done.set()
            return 202, b'{"status":"OK"}', ok
        if path.endswith("/error"):
            kind = dict(req.headers).get(b"lambda-runtime-function-error-type", b"").decode()
            self.error = (kind, body)
            self.done.set()
            return 202, b'{"status":"OK"}', ok
        return 404, b'{"status":"NO"}', ok


HANDLER = """\
import sys
print("init line from module")

def handler(event, context):
    print("hello from handler", event["x"])
    print("to stderr " + "y" * 3, file=sys.stderr, flush=True)
    data = bytearray(40 * 1024 * 1024)  # touch some memory so the peak shows it
    return {"got": event["x"], "mem": int(context.memory_limit_in_mb), "n": len(data)}
"""


def function(**kw: Any) -> FunctionConfig:
    base: dict[str, Any] = dict(
        name="h4fn",
        region="us-east-1",
        account="000000000000",
        role="arn:aws:iam::000000000000:role/r",
        runtime="python3.13",
        handler="index.handler",
        memory_size=192,
        timeout=30,
        revision_id="r1",
    )
    base.update(kw)
    return FunctionConfig(**base)


def lambda_env(fn: FunctionConfig, runtime_api: str) -> dict[str, str]:
    return {
        "AWS_LAMBDA_RUNTIME_API": runtime_api,
        "AWS_LAMBDA_FUNCTION_NAME": fn.name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(fn.memory_size),
        "AWS_LAMBDA_FUNCTION_TIMEOUT": str(fn.timeout),
        "AWS_LAMBDA_FUNCTION_VERSION": fn.version,
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{fn.name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": "2026/01/01/[$LATEST]0123456789abcdef",
        "AWS_REGION": fn.region,
        "AWS_DEFAULT_REGION": fn.region,
        "_HANDLER": fn.handler or "",
        "PYTHONUNBUFFERED": "1",
    }


async def read_until(output: trio.MemoryReceiveChannel[bytes], needle: bytes, seen: list[bytes]) -> None:
    if any(needle in line for line in seen):
        return
    async for line in output:
        seen.append(line)
        if needle in line:
            return
    raise AssertionError(f"output ended before {needle!r}; saw {seen!r}")


async def inspect(container_id: str) -> dict[str, Any] | None:
    res = await trio.to_thread.run_sync(docker_cli, "container", "inspect", container_id)
    if res.returncode != 0:
        return None
    data: list[dict[str, Any]] = json.loads(res.stdout)
    return data[0]


# -- tests ----------------------------------------------------------------------------------


async def test_python_environment_round_trip(
    executor: DockerExecutor,
    python_image: str,
    settings: Settings,
    tmp_path: Path,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "index.py").write_text(HANDLER)
    api = TinyRuntimeApi(json.dumps({"x": 42}).encode())
    port = await nursery.start(api.serve, executor.bind_host)
    runtime_api = f"{executor.advertise_host}:{port}"
    fn = function()
    spec = EnvironmentSpec(
        function=fn,
        code_dir=code,
        runtime_api=runtime_api,
        env=lambda_env(fn, runtime_api),
        image=python_image,
        labels={"flocid.test": "h4"},
    )
    t0 = time.perf_counter()
    with trio.fail_after(60):
        env = await executor.start(spec)
    t_start = time.perf_counter() - t0
    try:
        seen: list[bytes] = []
        with trio.fail_after(60):
            await api.done.wait()
        t_first = time.perf_counter() - t0
        with trio.fail_after(60):
            await read_until(env.output, b"hello from handler 42", seen)
            await read_until(env.output, b"to stderr yyy", seen)
        assert api.error is None, api.error
        assert api.response is not None
        assert json.loads(api.response) == {"got": 42, "mem": 192, "n": 40 * 1024 * 1024}
        assert any(b"init line from module" in line for line in seen), seen
        assert all(b"\n" not in line for line in seen)
        # The runtime client asked for /next twice: once for our event, once parked after it.
        with trio.fail_after(30):
            await api.parked.wait()
        assert len(api.next_headers) == 2

        info = await inspect(env.id)
        assert info is not None
        assert info["HostConfig"]["Memory"] == 192 * 1024 * 1024
        assert info["Config"]["Labels"][MANAGED_LABEL] == "1"
        assert info["Config"]["Labels"][INSTANCE_LABEL] == str(settings.data_dir.resolve())
        assert info["Config"]["Labels"]["flocid.test"] == "h4"
        assert info["Config"]["Cmd"] == ["index.handler"]
        assert info["Name"].lstrip("/").startswith("flocid-h4test-h4fn-")
        assert not info["HostConfig"].get("PortBindings")
        assert info["HostConfig"]["Init"] is True
        assert executor._docker.connector.limit == 0  # two long requests per environment

        t2 = time.perf_counter()
        peak = await env.memory_peak_mb()
        t_file = time.perf_counter() - t2
        # without the cgroup file (flocid in a container without the host's cgroup tree): the stats API
        monkeypatch.setattr(docker_executor, "_open_cgroup_peak", lambda _id: None)
        env._close_peak()
        env._last_peak = None
        t2 = time.perf_counter()
        peak_api = await env.memory_peak_mb()
        t_api = time.perf_counter() - t2
        print(
            f"memory_peak_mb: cgroup file {peak} MB in {t_file * 1000:.2f} ms, "
            f"stats API {peak_api} MB in {t_api * 1000:.1f} ms"
        )
        assert peak is not None and 40 <= peak <= 192
        assert peak_api is not None and abs(peak_api - peak) <= 4
    finally:
        t1 = time.perf_counter()
        with trio.fail_after(30):
            await env.stop()
        t_stop = time.perf_counter() - t1
    print(f"start() {t_start * 1000:.0f} ms, first response {t_first * 1000:.0f} ms")
    print(f"stop() {t_stop * 1000:.0f} ms")
    assert await inspect(env.id) is None
    with trio.fail_after(10):
        status = await env.wait_exit()
    # SIGTERM (143) if the runtime handles it, else SIGKILL after the 1 s grace (137).
    assert status in (137, 143), status
    with trio.fail_after(10):
        await env.stop()  # idempotent
    nursery.cancel_scope.cancel()


async def test_image_function_exit_status_and_output(executor: DockerExecutor, python_image: str) -> None:
    fn = function(
        package_type="Image",
        image_uri=python_image,
        runtime=None,
        handler=None,
        image_config={
            "EntryPoint": ["/bin/sh", "-c"],
            "Command": ['echo "bye from $PWD"; echo oops >&2; exit 3'],
            "WorkingDirectory": "/tmp",
        },
    )
    spec = EnvironmentSpec(function=fn, code_dir=None, runtime_api="127.0.0.1:9", env={})
    with trio.fail_after(60):
        env = await executor.start(spec)
    try:
        with trio.fail_after(30):
            assert await env.wait_exit() == 3
            lines = [line async for line in env.output]
        assert lines == [b"bye from /tmp", b"oops"] or sorted(lines) == [b"bye from /tmp", b"oops"]
    finally:
        await env.stop()
    assert await inspect(env.id) is None


def _idle_image_spec(python_image: str) -> EnvironmentSpec:
    """An image function whose container just idles (no runtime, nothing to hand an invoke to)."""
    fn = function(
        package_type="Image",
        image_uri=python_image,
        runtime=None,
        handler=None,
        image_config={"EntryPoint": ["/bin/sh", "-c"], "Command": ["while :; do sleep 1; done"]},
    )
    return EnvironmentSpec(function=fn, code_dir=None, runtime_api="127.0.0.1:9", env={})


async def test_stop_under_cancellation_still_removes(executor: DockerExecutor, python_image: str) -> None:
    spec = _idle_image_spec(python_image)
    with trio.fail_after(60):
        env = await executor.start(spec)
    with trio.CancelScope() as scope:
        scope.cancel()
        await env.stop()  # shielded inside: runs to completion although we are cancelled
    assert await inspect(env.id) is None


async def test_reap_orphans_removes_only_this_instance(executor: DockerExecutor, python_image: str) -> None:
    mine = await trio.to_thread.run_sync(
        lambda: docker_cli(
            "create",
            "--label",
            f"{MANAGED_LABEL}=1",
            "--label",
            f"{INSTANCE_LABEL}={executor.instance_id}",
            python_image,
        )
    )
    other = await trio.to_thread.run_sync(
        lambda: docker_cli(
            "create",
            "--label",
            f"{MANAGED_LABEL}=1",
            "--label",
            f"{INSTANCE_LABEL}=/somewhere/else",
            python_image,
        )
    )
    assert mine.returncode == 0 and other.returncode == 0, (mine.stderr, other.stderr)
    mine_id, other_id = mine.stdout.strip(), other.stdout.strip()
    try:
        with trio.fail_after(30):
            assert await executor.reap_orphans() == 1
        assert await inspect(mine_id) is None
        assert await inspect(other_id) is not None
        assert await executor.reap_orphans() == 0
    finally:
        await trio.to_thread.run_sync(docker_cli, "rm", "-f", mine_id, other_id)


async def test_missing_image_that_cannot_be_pulled(executor: DockerExecutor, tmp_path: Path) -> None:
    lines: list[str] = []
    executor._progress = lines.append
    # A registry on a closed loopback port: the pull fails at once, without leaving the machine.
    fn = function(package_type="Image", image_uri="127.0.0.1:1/lambda/nope:1", runtime=None, handler=None)
    spec = EnvironmentSpec(function=fn, code_dir=None, runtime_api="127.0.0.1:9", env={})
    with trio.fail_after(60), pytest.raises(ExecutorError) as info:
        await executor.start(spec)
    msg = str(info.value)
    assert "127.0.0.1:1/lambda/nope:1" in msg and "flocid images build" in msg and "FLOCI_ECR_BASE_URI" in msg
    assert "\n" not in msg
    assert lines and "pulling it" in lines[0]


async def test_zip_function_without_code_dir_fails_clearly(executor: DockerExecutor, tmp_path: Path) -> None:
    spec = EnvironmentSpec(function=function(), code_dir=tmp_path / "absent", runtime_api="h:1", env={})
    with pytest.raises(ExecutorError, match="No code location for function h4fn"):
        await executor.start(spec)


@pytest.mark.parametrize("url", ["unix:///nonexistent/docker.sock", "tcp://127.0.0.1:1"])
async def test_check_names_the_fix_when_docker_is_unreachable(tmp_path: Path, url: str) -> None:
    async with open_docker_executor(Settings(data_dir=tmp_path), docker_url=url) as ex:
        with trio.fail_after(30), pytest.raises(ExecutorUnavailable) as info:
            await ex.check()
    msg = str(info.value)
    print(msg)
    assert msg.startswith("Docker is not reachable at ")
    assert "start dockerd or set DOCKER_HOST" in msg
    assert "\n" not in msg


async def test_check_with_bogus_docker_host_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/bogus.sock")
    async with open_docker_executor(Settings(data_dir=tmp_path)) as ex:
        with (
            trio.fail_after(30),
            pytest.raises(ExecutorUnavailable, match="bogus.sock.*start dockerd or set DOCKER_HOST"),
        ):
            await ex.check()


async def test_bind_and_advertise_hosts(executor: DockerExecutor, tmp_path: Path) -> None:
    res = await trio.to_thread.run_sync(
        docker_cli, "network", "inspect", "bridge", "--format", "{{json .IPAM.Config}}"
    )
    assert res.returncode == 0
    assert executor.advertise_host.count(".") == 3
    assert executor.bind_host in (executor.advertise_host, "0.0.0.0")
    async with open_docker_executor(Settings(data_dir=tmp_path, docker_host_override="10.1.2.3")) as ex:
        await ex.check()
        assert ex.advertise_host == "10.1.2.3"
        assert ex.bind_host == "0.0.0.0"


BOOTSTRAP = """\
#!/bin/sh
# A custom runtime in shell: the Runtime API loop with curl.
echo "bootstrap up, handler $_HANDLER"
api="http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime/invocation"
while true; do
    headers=$(mktemp)
    event=$(curl -sS -D "$headers" "$api/next")
    id=$(grep -i '^Lambda-Runtime-Aws-Request-Id:' "$headers" | cut -d: -f2 | tr -d ' \\r\\n')
    echo "got $id"
    curl -sS -o /dev/null -X POST "$api/$id/response" -d "{\\"echo\\": $event}"
done
"""


async def test_provided_runtime_runs_the_zip_bootstrap(
    executor: DockerExecutor, provided_image: str, tmp_path: Path, nursery: trio.Nursery
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "bootstrap").write_text(BOOTSTRAP)
    (code / "bootstrap").chmod(0o644)  # zips lose the x bit; the executor makes it 0755
    api = TinyRuntimeApi(b'{"n": 7}', request_id="req-p")
    port = await nursery.start(api.serve, executor.bind_host)
    runtime_api = f"{executor.advertise_host}:{port}"
    fn = function(runtime="provided.al2023", handler="function.handler", name="h4prov")
    spec = EnvironmentSpec(
        function=fn, code_dir=code, runtime_api=runtime_api, env=lambda_env(fn, runtime_api)
    )
    with trio.fail_after(60):
        env = await executor.start(spec)  # image from the runtime: FLOCI_ECR_BASE_URI-style base
    try:
        seen: list[bytes] = []
        with trio.fail_after(60):
            await api.done.wait()
            await read_until(env.output, b"got req-p", seen)
        assert api.error is None
        assert json.loads(api.response or b"") == {"echo": {"n": 7}}
        assert b"bootstrap up, handler function.handler" in seen
    finally:
        await env.stop()
    nursery.cancel_scope.cancel()


VOLUME_HANDLER = """\
import os

def handler(event, context):
    try:
        open("/var/task/new-file", "w")
        read_only = False
    except OSError:
        read_only = True
    return {"blob": os.path.getsize("/var/task/blob.bin"), "read_only": read_only}
"""


async def invoke_once(
    executor: DockerExecutor, nursery: trio.Nursery, fn: FunctionConfig, code: Path, image: str
) -> tuple[Any, dict[str, Any] | None]:
    api = TinyRuntimeApi(b"{}")
    port = await nursery.start(api.serve, executor.bind_host)
    runtime_api = f"{executor.advertise_host}:{port}"
    spec = EnvironmentSpec(
        function=fn, code_dir=code, runtime_api=runtime_api, env=lambda_env(fn, runtime_api), image=image
    )
    with trio.fail_after(60):
        env = await executor.start(spec)
    try:
        with trio.fail_after(60):
            await api.done.wait()
        assert api.error is None, api.error
        return json.loads(api.response or b""), await inspect(env.id)
    finally:
        await env.stop()


async def test_big_code_goes_on_a_shared_read_only_volume(
    executor: DockerExecutor, python_image: str, tmp_path: Path, nursery: trio.Nursery
) -> None:
    lines: list[str] = []
    executor._progress = lines.append
    executor.code_volume_min_bytes = 4096  # "big" for this test; the default is 32 MiB
    code = tmp_path / "code"
    code.mkdir()
    (code / "index.py").write_text(VOLUME_HANDLER)
    (code / "blob.bin").write_bytes(b"x" * 5000)
    fn = function(code_id=secrets.token_hex(32))
    volume = code_volume_name(executor._settings.container_name_prefix, fn.code_id or "")
    try:
        assert await invoke_once(executor, nursery, fn, code, python_image) == (
            {"blob": 5000, "read_only": True},
            ANY,
        )
        # Another version with the same code, after a "restart" (the in-memory cache is gone):
        # the volume's ready marker is found, nothing is copied again.
        executor._ready_volumes.clear()
        result, _ = await invoke_once(executor, nursery, attrs.evolve(fn, version="1"), code, python_image)
        assert result == {"blob": 5000, "read_only": True}
        assert [line for line in lines if "filling code volume" in line] == [
            f"filling code volume {volume} for h4fn (once per code version)"
        ]
        res = await trio.to_thread.run_sync(docker_cli, "volume", "inspect", volume)
        assert res.returncode == 0
        assert json.loads(res.stdout)[0]["Labels"]["flocid.code-id"] == fn.code_id
    finally:
        await trio.to_thread.run_sync(docker_cli, "volume", "rm", "-f", volume)
    nursery.cancel_scope.cancel()


async def test_closing_the_executor_stops_what_is_left(python_image: str, settings: Settings) -> None:
    spec = _idle_image_spec(python_image)
    with trio.fail_after(60):
        async with open_docker_executor(settings) as ex:
            await ex.check()
            env = await ex.start(spec)
            assert (await inspect(env.id) or {})["State"]["Running"] is True
    assert await inspect(env.id) is None


async def test_closing_the_executor_removes_containers_it_lost_track_of(
        python_image: str, settings: Settings) -> None:
    """A stop cut short by its bound (a busy dockerd) drops the environment from the executor's
    set; the shutdown's last sweep by label still removes its container."""
    spec = _idle_image_spec(python_image)
    with trio.fail_after(90):
        async with open_docker_executor(settings) as ex:
            await ex.check()
            env = await ex.start(spec)
            ex._environments.discard(env)  # as DockerEnvironment.stop does when its bound cuts it short
            lost = await trio.to_thread.run_sync(
                lambda: docker_cli("create", "--label", f"{MANAGED_LABEL}=1",
                                   "--label", f"{INSTANCE_LABEL}={ex.instance_id}", python_image))
            assert lost.returncode == 0, lost.stderr
    assert await inspect(env.id) is None
    assert await inspect(lost.stdout.strip()) is None


@pytest.fixture
def nodejs_image(docker_ready: None) -> str:
    return need_image(image_for_runtime("nodejs20.x", ECR_BASE))


async def test_nodejs_runtime_round_trip(
    executor: DockerExecutor, nodejs_image: str, tmp_path: Path, nursery: trio.Nursery
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "index.mjs").write_text(
        'export const handler = async (event) => { console.log("node got", event.x); return { doubled: event.x * 2 }; };\n'
    )
    api = TinyRuntimeApi(b'{"x": 21}', request_id="req-n")
    port = await nursery.start(api.serve, executor.bind_host)
    runtime_api = f"{executor.advertise_host}:{port}"
    fn = function(runtime="nodejs20.x", handler="index.handler", name="h4node")
    spec = EnvironmentSpec(
        function=fn, code_dir=code, runtime_api=runtime_api, env=lambda_env(fn, runtime_api)
    )
    with trio.fail_after(60):
        env = await executor.start(spec)
    try:
        seen: list[bytes] = []
        with trio.fail_after(60):
            await api.done.wait()
            await read_until(env.output, b"node got", seen)
        assert api.error is None, api.error
        assert json.loads(api.response or b"") == {"doubled": 42}
        assert any(b"node got 21" in line for line in seen), seen
    finally:
        await env.stop()
    nursery.cancel_scope.cancel()


async def test_custom_network_attaches_and_reaches_the_host(
    python_image: str, tmp_path: Path, nursery: trio.Nursery
) -> None:
    net = f"flocid-h4test-{secrets.token_hex(3)}"
    created = await trio.to_thread.run_sync(docker_cli, "network", "create", net)
    assert created.returncode == 0, created.stderr
    try:
        gateway = json.loads((await trio.to_thread.run_sync(docker_cli, "network", "inspect", net)).stdout)[
            0
        ]["IPAM"]["Config"][0]["Gateway"]
        settings = Settings(
            data_dir=tmp_path / "data", container_name_prefix="flocid-h4test", docker_network=net
        )
        async with open_docker_executor(settings) as ex:
            await ex.check()
            assert ex.advertise_host == gateway
            code = tmp_path / "code"
            code.mkdir()
            (code / "index.py").write_text(VOLUME_HANDLER.replace("blob.bin", "index.py"))
            result, info = await invoke_once(ex, nursery, function(), code, python_image)
            assert result["read_only"] is False  # copied code, not a volume
            assert info is not None
            assert info["HostConfig"]["NetworkMode"] == net
            assert list(info["NetworkSettings"]["Networks"]) == [net]
        async with open_docker_executor(attrs.evolve(settings, docker_network=net + "-absent")) as ex:
            with pytest.raises(ExecutorUnavailable, match=f"Docker network {net}-absent does not exist"):
                await ex.check()
    finally:
        await trio.to_thread.run_sync(docker_cli, "network", "rm", net)
    nursery.cancel_scope.cancel()
