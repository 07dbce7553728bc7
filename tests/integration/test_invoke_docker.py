"""Invoke through the HTTP API on real Docker, with the locally built runtime images and the real
runtime clients inside (awslambdaric for Python, aws-lambda-ric for Node.js, a shell bootstrap).

Needs dockerd and the ``flocid.local`` images (``scripts/test`` provides both). Without them the
tests skip and say why; under ``CI=true`` they fail instead.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from botocore.exceptions import ClientError

from flocid.daemon import Daemon, run_daemon
from tests.conftest import ROLE, Aws, make_zip, settings_for
from tests.integration.conftest import docker, require_docker

pytestmark = pytest.mark.docker


@pytest.fixture(autouse=True)
def _docker_ready() -> None:
    require_docker()


@pytest.fixture
async def ddaemon(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Daemon]:
    d: Daemon = await nursery.start(run_daemon, settings_for(
        tmp_path, executor="docker", ecr_base_uri="flocid.local", listen_docker_bridge=True,
    ))
    yield d
    d.stop()


@pytest.fixture
def daws(ddaemon: Daemon) -> Aws:
    return Aws(ddaemon.url)


PY_APP = """
import os, time, json
COUNT = 0
def handler(event, context):
    global COUNT
    COUNT += 1
    action = (event or {}).get("action")
    if action == "raise":
        raise ValueError("boom")
    if action == "sleep":
        time.sleep(event["seconds"])
    if action == "exit":
        os._exit(3)
    if action == "big":
        return "x" * event["n"]
    print("hello from the handler")
    return {"count": COUNT, "version": os.environ["AWS_LAMBDA_FUNCTION_VERSION"],
            "memory": os.environ["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], "region": os.environ["AWS_REGION"],
            "mine": os.environ.get("MINE"), "tag": TAG, "remaining": context.get_remaining_time_in_millis()}
TAG = "v1"
"""


def py_zip(tag: str = "v1", extra: str = "") -> bytes:
    return make_zip({"index.py": PY_APP.replace('TAG = "v1"', f'TAG = "{tag}"') + extra})


async def create(aws: Aws, name: str, code: bytes | None = None, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(FunctionName=name, Runtime="python3.13", Role=ROLE, Handler="index.handler",
                                Code={"ZipFile": code or py_zip()}, Timeout=10)
    args.update(kw)
    out: dict[str, Any] = await aws.lambda_.create_function(**args)
    return out


async def invoke(aws: Aws, name: str, payload: Any = None, **kw: Any) -> tuple[dict[str, Any], Any]:
    out = await aws.lambda_.invoke(FunctionName=name, Payload=json.dumps(payload).encode(), **kw)
    raw = out["Payload"].read()
    return out, json.loads(raw) if raw else None


async def test_python_success_env_and_warm_reuse(daws: Aws) -> None:
    await create(daws, "py", Environment={"Variables": {"MINE": "yes"}}, MemorySize=256)
    out, body = await invoke(daws, "py", {"a": 1})
    assert out["StatusCode"] == 200 and "FunctionError" not in out
    assert out["ExecutedVersion"] == "$LATEST"
    assert out["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]
    assert body["count"] == 1 and body["version"] == "$LATEST" and body["memory"] == "256"
    assert body["region"] == "us-east-1" and body["mine"] == "yes"
    assert 0 < body["remaining"] <= 10000
    _, body2 = await invoke(daws, "py", {})
    assert body2["count"] == 2, "the second invoke should reuse the warm container"


async def test_nodejs_and_provided_runtimes(daws: Aws) -> None:
    node = make_zip({"index.mjs": "let n = 0;\nexport const handler = async (event) => "
                     "({ n: ++n, got: event, runtime: process.env.AWS_EXECUTION_ENV });\n"})
    await create(daws, "node", node, Runtime="nodejs20.x")
    _, body = await invoke(daws, "node", {"x": 1})
    assert body["n"] == 1 and body["got"] == {"x": 1}
    _, body = await invoke(daws, "node", {"x": 2})
    assert body["n"] == 2

    bootstrap = """#!/bin/sh
set -eu
while true; do
  HEADERS=$(mktemp)
  EVENT=$(curl -sS -LD "$HEADERS" "http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime/invocation/next")
  ID=$(grep -i Lambda-Runtime-Aws-Request-Id "$HEADERS" | tr -d '[:space:]' | cut -d: -f2)
  curl -sS -X POST "http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime/invocation/$ID/response" \
       -d "{\\"echo\\": $EVENT, \\"handler\\": \\"$_HANDLER\\"}" > /dev/null
done
"""
    await create(daws, "prov", make_zip({"bootstrap": bootstrap}), Runtime="provided.al2023",
                 Handler="my.handler")
    _, body = await invoke(daws, "prov", {"y": 2})
    assert body == {"echo": {"y": 2}, "handler": "my.handler"}


async def test_handler_error_init_error_and_crash(daws: Aws) -> None:
    await create(daws, "err")
    out, body = await invoke(daws, "err", {"action": "raise"})
    assert out["StatusCode"] == 200 and out["FunctionError"] == "Unhandled"
    assert body["errorType"] == "ValueError" and body["errorMessage"] == "boom"
    assert isinstance(body["stackTrace"], list)

    await create(daws, "initerr", make_zip({"index.py": "raise RuntimeError('at import')\n"}))
    out, body = await invoke(daws, "initerr", {})
    assert out["FunctionError"] == "Unhandled"
    assert body["errorType"] == "RuntimeError" and "at import" in body["errorMessage"]

    t0 = time.monotonic()
    out, body = await invoke(daws, "err", {"action": "exit"})
    assert time.monotonic() - t0 < 5, "a crash must surface at once, not after the timeout"
    assert out["FunctionError"] == "Unhandled" and body["errorType"] == "Runtime.ExitError"
    assert body["errorMessage"].startswith("RequestId: ")
    _, ok = await invoke(daws, "err", {})
    assert ok["count"] == 1, "a fresh environment after the crash"


async def test_timeout_then_next_invoke_works(daws: Aws) -> None:
    await create(daws, "slow", Timeout=1)
    out, body = await invoke(daws, "slow", {"action": "sleep", "seconds": 5})
    assert out["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Sandbox.Timedout"
    assert body["errorMessage"].endswith("Error: Task timed out after 1.00 seconds")
    out, body = await invoke(daws, "slow", {})
    assert out["StatusCode"] == 200 and "FunctionError" not in out and body["count"] == 1


async def test_tail_log(daws: Aws) -> None:
    await create(daws, "logs")
    out, _ = await invoke(daws, "logs", {}, LogType="Tail")
    log = base64.b64decode(out["LogResult"]).decode()
    assert "START RequestId: " in log and "Version: $LATEST" in log
    assert "hello from the handler" in log
    assert "END RequestId: " in log
    report = next(line for line in log.splitlines() if line.startswith("REPORT"))
    for field in ("Duration:", "Billed Duration:", "Memory Size: 128 MB", "Max Memory Used:", "Init Duration:"):
        assert field in report, report
    out, _ = await invoke(daws, "logs", {}, LogType="Tail")
    warm = base64.b64decode(out["LogResult"]).decode()
    assert "Init Duration" not in warm


async def test_drain_on_update_and_qualified_invokes(daws: Aws) -> None:
    await create(daws, "ver", py_zip("v1"), Publish=True)
    _, body = await invoke(daws, "ver", {})
    assert body["tag"] == "v1"
    await daws.lambda_.update_function_code(FunctionName="ver", ZipFile=py_zip("v2"))
    _, body = await invoke(daws, "ver", {})
    assert body["tag"] == "v2" and body["count"] == 1, "update must drain the warm $LATEST container"
    out, body = await invoke(daws, "ver:1", {})
    assert body["tag"] == "v1" and body["version"] == "1" and out["ExecutedVersion"] == "1"
    out, body = await invoke(daws, "ver", {}, Qualifier="1")
    assert body["tag"] == "v1"
    v2 = await daws.lambda_.publish_version(FunctionName="ver")
    await daws.lambda_.create_alias(FunctionName="ver", Name="live", FunctionVersion="1",
                                    RoutingConfig={"AdditionalVersionWeights": {v2["Version"]: 1.0}})
    out, body = await invoke(daws, "ver:live", {})
    assert out["ExecutedVersion"] == "2" and body["tag"] == "v2"
    await daws.lambda_.update_alias(FunctionName="ver", Name="live",
                                    RoutingConfig={"AdditionalVersionWeights": {"2": 0.5}})
    seen = set()
    for _ in range(30):
        out, _b = await invoke(daws, "ver", {}, Qualifier="live")
        seen.add(out["ExecutedVersion"])
    assert seen == {"1", "2"}


async def test_reserved_concurrency_429(daws: Aws) -> None:
    await create(daws, "busy")
    await daws.lambda_.put_function_concurrency(FunctionName="busy", ReservedConcurrentExecutions=1)
    await invoke(daws, "busy", {})  # warm it
    results: list[Any] = []

    async def one() -> None:
        try:
            out, _ = await invoke(daws, "busy", {"action": "sleep", "seconds": 1.5})
            results.append(out["StatusCode"])
        except ClientError as err:
            results.append(err.response)

    async with trio.open_nursery() as n:
        for _ in range(3):
            n.start_soon(one)
    assert results.count(200) == 1, results
    throttled = [r for r in results if isinstance(r, dict)]
    assert len(throttled) == 2
    for r in throttled:
        assert r["ResponseMetadata"]["HTTPStatusCode"] == 429
        assert r["Error"]["Code"] == "TooManyRequestsException" and r["Error"]["Message"] == "Rate Exceeded."
        assert r["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
        assert r["ResponseMetadata"]["HTTPHeaders"]["retry-after"]
    await daws.lambda_.put_function_concurrency(FunctionName="busy", ReservedConcurrentExecutions=0)
    with pytest.raises(ClientError) as info:
        await invoke(daws, "busy", {})
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429


async def test_payload_limits_event_and_dry_run(daws: Aws) -> None:
    await create(daws, "lim")
    with pytest.raises(ClientError) as info:
        await daws.lambda_.invoke(FunctionName="lim", Payload=b'"' + b"x" * 6291456 + b'"')
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413
    with pytest.raises(ClientError) as info:
        await daws.lambda_.invoke(FunctionName="lim", InvocationType="Event", Payload=b'"' + b"x" * 1048576 + b'"')
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413
    out, body = await invoke(daws, "lim", {"action": "big", "n": 6291556})
    assert out["FunctionError"] == "Unhandled" and body["errorType"] == "Function.ResponseSizeTooLarge"
    out, body = await invoke(daws, "lim", {"action": "big", "n": 1000})
    assert out["StatusCode"] == 200 and body == "x" * 1000, "the environment stays usable"
    out = await daws.lambda_.invoke(FunctionName="lim", InvocationType="Event", Payload=b"{}")
    assert out["StatusCode"] == 202 and out["Payload"].read() == b""
    out = await daws.lambda_.invoke(FunctionName="lim", InvocationType="DryRun", Payload=b"{}")
    assert out["StatusCode"] == 204


async def test_image_function(daws: Aws, tmp_path: Path) -> None:
    ctx = tmp_path / "img"
    ctx.mkdir()
    (ctx / "app.py").write_text("def main(event, context):\n    return {'image': True, 'cwd': __import__('os').getcwd()}\n")
    (ctx / "Dockerfile").write_text(
        "FROM flocid.local/lambda/python:3.13\nCOPY app.py /opt/app/app.py\nCMD [\"app.nope\"]\n")
    tag = "flocid-test/image-fn:1"
    built = docker("build", "-q", "-t", tag, str(ctx))
    assert built.returncode == 0, built.stderr
    try:
        await daws.lambda_.create_function(
            FunctionName="imgfn", Role=ROLE, PackageType="Image", Code={"ImageUri": tag},
            ImageConfig={"Command": ["app.main"], "WorkingDirectory": "/opt/app"},
        )
        out, body = await invoke(daws, "imgfn", {})
        assert out["StatusCode"] == 200 and body == {"image": True, "cwd": "/opt/app"}, body
    finally:
        await daws.lambda_.delete_function(FunctionName="imgfn")
        docker("rmi", "-f", tag)


async def test_image_function_without_its_image_is_pending_then_failed(daws: Aws) -> None:
    out = await daws.lambda_.create_function(
        FunctionName="noimg", Role=ROLE, PackageType="Image",
        Code={"ImageUri": "flocid.local/lambda/absent-for-tests:1"},
    )
    assert out["State"] == "Pending" and out["StateReasonCode"] == "Creating"
    with trio.fail_after(60):
        while True:
            cfg = await daws.lambda_.get_function_configuration(FunctionName="noimg")
            if cfg["State"] != "Pending":
                break
            await trio.sleep(0.1)
    assert cfg["State"] == "Failed"
    assert "flocid images build" in cfg["StateReason"]
    with pytest.raises(ClientError) as info:
        await invoke(daws, "noimg", {})
    err = info.value.response
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 409
    assert err["Error"]["Message"] == ("The operation cannot be performed at this time. The function is "
                                       "currently in the following state: Failed")


#: A handler that lists functions through flocid's API at its AWS_ENDPOINT_URL.
LIST_FUNCTIONS_VIA_ENDPOINT = (
    "import os, json, urllib.request\n"
    "def handler(event, context):\n"
    "    url = os.environ['AWS_ENDPOINT_URL'] + '/2015-03-31/functions/'\n"
    "    with urllib.request.urlopen(url, timeout=5) as r:\n"
    "        names = [f['FunctionName'] for f in json.load(r)['Functions']]\n"
    "    return {'endpoint': os.environ['AWS_ENDPOINT_URL'], 'names': names}\n"
)


async def test_function_reaches_flocid_through_aws_endpoint_url(daws: Aws) -> None:
    code = make_zip({"index.py": LIST_FUNCTIONS_VIA_ENDPOINT})
    await create(daws, "caller", code)
    out, body = await invoke(daws, "caller", {})
    assert "FunctionError" not in out, body
    assert body["names"] == ["caller"]
    assert body["endpoint"].endswith(":" + daws.endpoint.rsplit(":", 1)[1])


async def test_a_configured_network_reaches_the_api_at_its_gateway(tmp_path: Path, nursery: trio.Nursery) -> None:
    """FLOCI_SERVICES_LAMBDA_DOCKER_NETWORK on the host: functions join it and AWS_ENDPOINT_URL is that
    network's gateway, where flocid now listens too (not only on docker0)."""
    import secrets

    net = f"flocid-apinet-{secrets.token_hex(3)}"
    made = docker("network", "create", net)
    assert made.returncode == 0, made.stderr
    try:
        gateway = json.loads(docker("network", "inspect", net).stdout)[0]["IPAM"]["Config"][0]["Gateway"]
        d: Daemon = await nursery.start(run_daemon, settings_for(
            tmp_path, executor="docker", ecr_base_uri="flocid.local", listen_docker_bridge=True,
            docker_network=net, container_name_prefix="flocid-apinet"))
        aws = Aws(d.url)
        try:
            assert f"http://{gateway}:{d.url.rsplit(':', 1)[1]}" in d.binds
            code = make_zip({"index.py": LIST_FUNCTIONS_VIA_ENDPOINT})
            await create(aws, "onnet", code)
            out, body = await invoke(aws, "onnet", {})
            assert "FunctionError" not in out, body
            assert body == {"endpoint": f"http://{gateway}:{d.url.rsplit(':', 1)[1]}", "names": ["onnet"]}
            ids = docker("ps", "-q", "--filter", "label=flocid.function=onnet").stdout.split()
            networks = json.loads(docker("inspect", "--format", "{{json .NetworkSettings.Networks}}", ids[0]).stdout)
            assert list(networks) == [net]
        finally:
            d.stop()
    finally:
        # The network cannot go while a container is on it: remove them now, not after the stop.
        left = docker("ps", "-aq", "--filter", f"label=flocid.instance={(tmp_path / 'data').resolve()}").stdout.split()
        if left:
            docker("rm", "-f", *left)
        docker("network", "rm", net)


async def test_hot_reload_bind_mount(tmp_path: Path, nursery: trio.Nursery) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "index.py").write_text("def handler(e, c):\n    return 'first'\n")
    d: Daemon = await nursery.start(run_daemon, settings_for(
        tmp_path, executor="docker", ecr_base_uri="flocid.local", listen_docker_bridge=True,
        hot_reload_enabled=True, hot_reload_allowed_paths=(str(tmp_path),)))
    aws = Aws(d.url)
    try:
        await create(aws, "hot", Code={"S3Bucket": "hot-reload", "S3Key": str(app)})
        _, body = await invoke(aws, "hot", {})
        assert body == "first"
        (app / "index.py").write_text("def handler(e, c):\n    return 'edited'\n")
        _, body = await invoke(aws, "hot", {})
        assert body == "edited", "an edited file is picked up with no API call"
        # Back to a zip: the bind mount must really be gone from the environment that runs it.
        await aws.lambda_.update_function_code(FunctionName="hot", ZipFile=py_zip("zip"))
        _, body = await invoke(aws, "hot", {})
        assert body["tag"] == "zip"
        ids = docker("ps", "-q", "--filter", "label=flocid.function=hot").stdout.split()
        assert len(ids) == 1
        mounts = json.loads(docker("inspect", "--format", "{{json .Mounts}}", ids[0]).stdout)
        assert [m for m in mounts if m.get("Type") == "bind"] == [], mounts
    finally:
        d.stop()


async def test_containers_resolve_localhost_floci_io_through_the_dns_responder(daws: Aws, ddaemon: Daemon) -> None:
    if not ddaemon.invoker._executor.dns_servers:
        pytest.fail("the DNS responder did not start: is port 53 on the Docker bridge taken by another "
                    "process (another flocid)? `ss -ulpn | grep :53`")
    port = daws.endpoint.rsplit(":", 1)[1]
    code = make_zip({"index.py": (
        "import socket, json, urllib.request\n"
        "def handler(event, context):\n"
        "    ip = socket.gethostbyname('my-bucket.localhost.floci.io')\n"
        f"    url = 'http://localhost.floci.io:{port}/2015-03-31/functions/'\n"
        "    with urllib.request.urlopen(url, timeout=5) as r:\n"
        "        names = [f['FunctionName'] for f in json.load(r)['Functions']]\n"
        "    return {'ip': ip, 'names': names}\n"
    )})
    await create(daws, "dns", code)
    out, body = await invoke(daws, "dns", {})
    assert "FunctionError" not in out, body
    from flocid.daemon import docker_bridge_ip

    assert body == {"ip": docker_bridge_ip(), "names": ["dns"]}


async def test_aws_config_path_is_mounted_read_only(tmp_path: Path, nursery: trio.Nursery) -> None:
    home = tmp_path / "dot-aws"
    home.mkdir()
    (home / "credentials").write_text("[default]\naws_access_key_id = AKIAFROMFILE\naws_secret_access_key = x\n")
    d: Daemon = await nursery.start(run_daemon, settings_for(
        tmp_path, executor="docker", ecr_base_uri="flocid.local", listen_docker_bridge=True, aws_config_path=home))
    aws = Aws(d.url)
    try:
        code = make_zip({"index.py": (
            "import os\n"
            "def handler(e, c):\n"
            "    path = os.environ['AWS_SHARED_CREDENTIALS_FILE']\n"
            "    try:\n"
            "        open(path, 'a').close()\n"
            "        writable = True\n"
            "    except OSError:\n"
            "        writable = False\n"
            "    return {'creds': open(path).read(), 'key': os.environ.get('AWS_ACCESS_KEY_ID'), 'writable': writable}\n"
        )})
        await create(aws, "cfg", code)
        _, body = await invoke(aws, "cfg", {})
        assert "AKIAFROMFILE" in body["creds"] and body["key"] is None and body["writable"] is False
    finally:
        d.stop()


async def test_function_logs_on_docker_keep_bursts_and_long_lines(daws: Aws, ddaemon: Daemon) -> None:
    from tests.conftest import _Async, client

    code = make_zip({"index.py": (
        "def handler(event, context):\n"
        "    for i in range(3000):\n"
        "        print('line', i)\n"
        "    print('L' * 40000)\n"
        "    return 1\n")})
    await create(daws, "burst", code)
    await invoke(daws, "burst", {})
    logs = _Async(client(ddaemon.url, service="logs"))
    with trio.fail_after(30):
        while True:
            await ddaemon.invoker._log_sink.flush()
            found = await logs.filter_log_events(logGroupName="/aws/lambda/burst")
            messages = [e["message"] for e in found["events"]]
            if any(m.startswith("REPORT RequestId: ") for m in messages) and "L" * 40000 in messages:
                break
            await trio.sleep(0.05)
    assert [m for m in messages if m.startswith("line ")] == [f"line {i}" for i in range(3000)]


async def test_boto3_in_a_function_uses_virtual_hosted_s3_through_the_dns_responder(
        daws: Aws, ddaemon: Daemon) -> None:
    from tests.conftest import _Async, client

    if not ddaemon.invoker._executor.dns_servers:
        pytest.fail("the DNS responder did not start (port 53 on the Docker bridge taken?)")
    s3 = _Async(client(ddaemon.url, service="s3"))
    await s3.create_bucket(Bucket="vhost-bucket")
    await s3.put_object(Bucket="vhost-bucket", Key="hello.txt", Body=b"hello from s3")
    port = ddaemon.url.rsplit(":", 1)[1]
    code = make_zip({"index.py": (
        "import boto3, botocore.config\n"
        "def handler(event, context):\n"
        f"    s3 = boto3.client('s3', endpoint_url='http://s3.localhost.floci.io:{port}',\n"
        "                      config=botocore.config.Config(s3={'addressing_style': 'virtual'}))\n"
        "    seen = []\n"
        "    s3.meta.events.register('before-send.s3.GetObject', lambda request, **kw: seen.append(request.url))\n"
        "    body = s3.get_object(Bucket='vhost-bucket', Key='hello.txt')['Body'].read().decode()\n"
        "    return {'body': body, 'url': seen[0]}\n"
    )})
    await create(daws, "vhost", code)
    out, body = await invoke(daws, "vhost", {})
    assert "FunctionError" not in out, body
    assert body["body"] == "hello from s3"
    assert body["url"].startswith(f"http://vhost-bucket.s3.localhost.floci.io:{port}/"), body["url"]


async def test_reactive_s3_sync_on_docker(daws: Aws, ddaemon: Daemon) -> None:
    """The seed's four steps with real containers: create from S3, invoke, upload, invoke sees it."""
    from tests.conftest import _Async, client

    s3 = _Async(client(ddaemon.url, service="s3"))
    await s3.create_bucket(Bucket="deploy")
    await s3.put_object(Bucket="deploy", Key="app.zip", Body=py_zip("s3-v1"))
    await create(daws, "s3sync", Code={"S3Bucket": "deploy", "S3Key": "app.zip"})
    _, body = await invoke(daws, "s3sync", {})
    assert body["tag"] == "s3-v1" and body["count"] == 1
    await s3.put_object(Bucket="deploy", Key="app.zip", Body=py_zip("s3-v2"))
    _, body = await invoke(daws, "s3sync", {})
    assert body["tag"] == "s3-v2" and body["count"] == 1, "new code, in a fresh container"
    # A multipart upload of the key counts too.
    mp = await s3.create_multipart_upload(Bucket="deploy", Key="app.zip")
    part = await s3.upload_part(Bucket="deploy", Key="app.zip", UploadId=mp["UploadId"], PartNumber=1,
                                Body=py_zip("s3-v3"))
    await s3.complete_multipart_upload(Bucket="deploy", Key="app.zip", UploadId=mp["UploadId"],
                                       MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]})
    _, body = await invoke(daws, "s3sync", {})
    assert body["tag"] == "s3-v3"


async def test_report_after_a_crash_shows_a_real_memory_reading(daws: Aws, ddaemon: Daemon) -> None:
    await create(daws, "memcrash", MemorySize=512)
    await invoke(daws, "memcrash", {})
    await ddaemon.invoker._log_sink.flush()  # the first REPORT (and its memory reading) is written
    with trio.fail_after(10):
        while not ddaemon.invoker._log_sink.written:
            await trio.testing.wait_all_tasks_blocked(0.01)
    out, body = await invoke(daws, "memcrash", {"action": "exit"}, LogType="Tail")
    assert body["errorType"] == "Runtime.ExitError"
    report = next(ln for ln in base64.b64decode(out["LogResult"]).decode().splitlines() if ln.startswith("REPORT"))
    used = int(report.split("Max Memory Used: ")[1].split(" MB")[0])
    assert 0 < used < 512, report
