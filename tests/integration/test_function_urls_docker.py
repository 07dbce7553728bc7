"""A function URL round trip with a real container (the locally built python image, awslambdaric
inside). Needs dockerd and the ``flocid.local`` images; without them the test skips and says why
(under ``CI=true`` it fails instead).
"""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from flocid.api.app import create_app
from flocid.daemon import Daemon, open_api_sockets, run_daemon, serve_api
from flocid.gateway import Gateway
from flocid.urls import create_url_app
from tests.conftest import ROLE, Aws, make_zip, settings_for
from tests.integration.conftest import require_docker

pytestmark = pytest.mark.docker


@pytest.fixture(autouse=True)
def _docker_ready() -> None:
    require_docker(("flocid.local/lambda/python:3.13",))


@pytest.fixture
async def front(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[tuple[Aws, int]]:
    d: Daemon = await nursery.start(run_daemon, settings_for(
        tmp_path, executor="docker", ecr_base_uri="flocid.local", listen_docker_bridge=True,
    ))
    sockets, port = open_api_sockets(settings_for(tmp_path / "front"))
    app = Gateway(create_app(d.control), url_app=create_url_app(d.control, d.invoker))
    scope = trio.CancelScope()

    async def serve(task_status: trio.TaskStatus[None]) -> None:
        with scope:
            await serve_api(app, sockets, task_status=task_status)

    await nursery.start(serve)
    yield Aws(f"http://127.0.0.1:{port}"), port
    scope.cancel()
    d.stop()


APP = r'''
import base64, json, platform
def handler(event, context):
    if event["rawPath"] == "/boom":
        raise RuntimeError("boom")
    return {"statusCode": 200, "headers": {"content-type": "application/octet-stream"},
            "cookies": ["seen=1"], "isBase64Encoded": True,
            "body": base64.b64encode(json.dumps({"event": event, "python": platform.python_version()})
                                     .encode() + bytes([0, 255])).decode()}
'''


def _request(port: int, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], list[str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        cookies = [v for k, v in resp.getheaders() if k.lower() == "set-cookie"]
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, cookies, resp.read()
    finally:
        conn.close()


async def test_function_url_round_trip_in_a_container(front: tuple[Aws, int]) -> None:
    aws, port = front
    await aws.lambda_.create_function(
        FunctionName="web", Runtime="python3.13", Role=ROLE, Handler="index.handler",
        Code={"ZipFile": make_zip({"index.py": APP})}, Timeout=30)
    url = (await aws.lambda_.create_function_url_config(FunctionName="web", AuthType="NONE"))["FunctionUrl"]
    await aws.lambda_.add_permission(FunctionName="web", StatementId="public", Action="lambda:InvokeFunctionUrl",
                                     Principal="*", FunctionUrlAuthType="NONE")
    host = url.split("//", 1)[1].split(":", 1)[0].rstrip("/")
    blob = bytes(range(256))
    with trio.fail_after(180):
        status, headers, cookies, body = await trio.to_thread.run_sync(
            _request, port, "POST", "/items/1?tag=a&tag=b",
            {"Host": host, "Content-Type": "application/octet-stream", "Cookie": "k=v"}, blob)
    assert status == 200, body
    assert headers["content-type"] == "application/octet-stream"
    assert cookies == ["seen=1"]
    assert body.endswith(bytes([0, 255]))
    doc = json.loads(body[:-2])
    assert doc["python"].startswith("3.13")  # it really ran in the image, not on this host's python
    ev = doc["event"]
    assert ev["rawPath"] == "/items/1" and ev["queryStringParameters"] == {"tag": "a,b"}
    assert ev["cookies"] == ["k=v"] and ev["isBase64Encoded"] is True
    assert base64.b64decode(ev["body"]) == blob
    with trio.fail_after(120):
        status, _, _, body = await trio.to_thread.run_sync(_request, port, "GET", "/boom", {"Host": host}, b"")
    assert (status, body) == (502, b"Internal Server Error")
