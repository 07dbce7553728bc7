"""Function URLs over real HTTP with the process executor (real awslambdaric, no Docker).

The daemon runs in-process; the function-URL front (``create_url_app``) is served by a local
fixture on its own port next to the daemon's API, through the same ``Gateway``, so the tests do not
depend on how ``flocid/daemon.py`` wires it. Requests are made with ``http.client`` from a worker
thread (repeated headers and any method are possible, and the body bytes are exactly ours).
"""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import botocore.auth
import botocore.awsrequest
import botocore.credentials
import pytest
import trio

from flocid.api.app import create_app
from flocid.daemon import Daemon, open_api_sockets, run_daemon, serve_api
from flocid.gateway import Gateway
from flocid.urls import create_url_app, target_version
from tests.conftest import Aws, create_fn, make_zip, settings_for

pytest.importorskip("awslambdaric", reason="the process executor runs handlers with awslambdaric")

APP = r'''
import base64, json
def handler(event, context):
    path = event["rawPath"]
    if path == "/error":
        raise ValueError("boom")
    if path == "/scalar":
        return "hello"
    if path == "/number":
        return 3
    if path == "/plain":
        return {"a": 1}
    if path == "/version":
        return {"statusCode": 200, "body": VERSION}
    if path == "/binary":
        return {"statusCode": 201, "headers": {"content-type": "application/octet-stream"},
                "body": base64.b64encode(bytes(range(256))).decode(), "isBase64Encoded": True}
    if path == "/cookies":
        return {"statusCode": 200, "cookies": ["a=1; Path=/", "b=2; HttpOnly"], "body": "ok"}
    if path == "/cors":
        return {"statusCode": 200, "headers": {"access-control-allow-origin": "https://evil.example"},
                "body": "x"}
    if path == "/badstatus":
        return {"statusCode": "nope"}
    return {"statusCode": 200, "headers": {"content-type": "application/json", "x-custom": "yes"},
            "body": json.dumps(event)}
'''


def app_zip(version: str = "v1") -> bytes:
    return make_zip({"index.py": f"VERSION = {version!r}\n" + APP})


@attrs.frozen
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


@attrs.frozen
class Front:
    daemon: Daemon
    aws: Aws
    port: int

    async def request(self, method: str, path: str, *, headers: list[tuple[str, str]] | None = None,
                      body: bytes = b"") -> Reply:
        def run() -> Reply:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                names = {k.lower() for k, _ in headers or ()}
                conn.putrequest(method, path, skip_host="host" in names, skip_accept_encoding=True)
                for k, v in headers or ():
                    conn.putheader(k, v)
                if body or method in ("POST", "PUT", "PATCH"):
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body or None)
                resp = conn.getresponse()
                return Reply(resp.status, resp.getheaders(), resp.read())
            finally:
                conn.close()

        with trio.fail_after(60):
            return await trio.to_thread.run_sync(run)

    async def url(self, name: str, *, auth: str = "NONE", public: bool = True, qualifier: str | None = None,
                  **kw: Any) -> str:
        """Create a URL config and return its id (with the public-invoke permission for NONE)."""
        extra = {"Qualifier": qualifier} if qualifier else {}
        out = await self.aws.lambda_.create_function_url_config(FunctionName=name, AuthType=auth, **extra, **kw)
        if auth == "NONE" and public:
            await self.aws.lambda_.add_permission(
                FunctionName=name, StatementId="public-url", Action="lambda:InvokeFunctionUrl",
                Principal="*", FunctionUrlAuthType="NONE", **extra)
        url = out["FunctionUrl"]
        url_id = url.split("//", 1)[1].split(".", 1)[0]
        assert len(url_id) == 32
        return str(url_id)


@pytest.fixture
async def front(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Front]:
    d: Daemon = await nursery.start(run_daemon, settings_for(tmp_path, executor="process"))
    sockets, port = open_api_sockets(settings_for(tmp_path / "front"))
    app = Gateway(create_app(d.control), url_app=create_url_app(d.control, d.invoker))
    scope = trio.CancelScope()

    async def serve(task_status: trio.TaskStatus[None]) -> None:
        with scope:
            await serve_api(app, sockets, task_status=task_status)

    await nursery.start(serve)
    yield Front(d, Aws(f"http://127.0.0.1:{port}"), port)
    scope.cancel()
    d.kill()


async def fn_with_url(front: Front, name: str = "web", **kw: Any) -> str:
    await create_fn(front.aws, name, Code={"ZipFile": app_zip()}, Timeout=30)
    return await front.url(name, **kw)


def host_of(url_id: str) -> str:
    return f"{url_id}.lambda-url.us-east-1.localhost.floci.io"


# ---- the event and the response ------------------------------------------------------------------

async def test_json_request_becomes_a_payload_v2_event(front: Front) -> None:
    url_id = await fn_with_url(front)
    payload = json.dumps({"hello": "world"}).encode()
    r = await front.request("POST", "/echo/a%20b?x=1&x=2&y=&z=%2F", headers=[
        ("Host", f"{host_of(url_id)}:4566"), ("Content-Type", "application/json"),
        ("User-Agent", "tester/1.0"), ("X-Multi", "p"), ("X-Multi", "q"), ("Cookie", "c1=v1; c2=v2"),
    ], body=payload)
    assert r.status == 200, r.body
    assert r.header("x-custom") == "yes"
    assert r.header("content-type") == "application/json"
    ev = r.json()
    assert ev["version"] == "2.0" and ev["routeKey"] == "$default"
    assert ev["rawPath"] == "/echo/a%20b"
    assert ev["rawQueryString"] == "x=1&x=2&y=&z=%2F"
    assert ev["queryStringParameters"] == {"x": "1,2", "y": "", "z": "/"}
    assert ev["cookies"] == ["c1=v1", "c2=v2"]
    assert "cookie" not in ev["headers"]
    assert ev["headers"]["x-multi"] == "p,q"
    assert ev["headers"]["user-agent"] == "tester/1.0"
    assert ev["headers"]["content-type"] == "application/json"
    assert ev["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert ev["body"] == payload.decode() and ev["isBase64Encoded"] is False
    ctx = ev["requestContext"]
    assert ctx["apiId"] == url_id and ctx["domainPrefix"] == url_id
    assert ctx["domainName"] == host_of(url_id)
    assert ctx["http"] == {"method": "POST", "path": "/echo/a%20b", "protocol": "HTTP/1.1",
                           "sourceIp": "127.0.0.1", "userAgent": "tester/1.0"}
    assert ctx["stage"] == "$default" and ctx["routeKey"] == "$default"
    assert ctx["accountId"] == "anonymous"
    assert ctx["requestId"] == r.header("x-amzn-RequestId")
    assert isinstance(ctx["timeEpoch"], int) and ctx["time"].endswith("+0000")


async def test_get_without_query_or_body_leaves_them_out(front: Front) -> None:
    url_id = await fn_with_url(front)
    r = await front.request("GET", f"/lambda-url/{url_id}", headers=[("Host", "127.0.0.1")])
    ev = r.json()
    assert ev["rawPath"] == "/" and ev["rawQueryString"] == ""
    assert "queryStringParameters" not in ev and "body" not in ev and "cookies" not in ev
    assert ev["isBase64Encoded"] is False
    assert ev["requestContext"]["domainName"] == host_of(url_id)


async def test_binary_bodies_both_ways(front: Front) -> None:
    url_id = await fn_with_url(front)
    blob = bytes(range(256)) * 4
    r = await front.request("PUT", f"/lambda-url/{url_id}/upload", body=blob,
                            headers=[("Content-Type", "application/octet-stream")])
    ev = r.json()
    assert ev["isBase64Encoded"] is True
    assert base64.b64decode(ev["body"]) == blob
    assert ev["requestContext"]["http"]["method"] == "PUT"
    down = await front.request("GET", f"/lambda-url/{url_id}/binary")
    assert down.status == 201
    assert down.header("content-type") == "application/octet-stream"
    assert down.body == bytes(range(256))


async def test_cookies_become_set_cookie_headers(front: Front) -> None:
    url_id = await fn_with_url(front)
    r = await front.request("GET", "/cookies", headers=[("Host", host_of(url_id))])
    assert r.status == 200 and r.body == b"ok"
    assert r.all("set-cookie") == ["a=1; Path=/", "b=2; HttpOnly"]


async def test_values_without_status_code_are_200_json(front: Front) -> None:
    url_id = await fn_with_url(front)
    for path, body in (("/scalar", b'"hello"'), ("/number", b"3"), ("/plain", b'{"a": 1}')):
        r = await front.request("GET", f"/lambda-url/{url_id}{path}")
        assert (r.status, r.body) == (200, body), path
        assert r.header("content-type") == "application/json"


async def test_handler_error_and_bad_response_are_502(front: Front) -> None:
    url_id = await fn_with_url(front)
    for path in ("/error", "/badstatus"):
        r = await front.request("GET", f"/lambda-url/{url_id}{path}")
        assert (r.status, r.body) == (502, b"Internal Server Error"), path


async def test_any_method_any_path(front: Front) -> None:
    url_id = await fn_with_url(front)
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"):
        r = await front.request(method, f"/lambda-url/{url_id}/deep/path/x.json", body=b"")
        assert r.status == 200, (method, r.body)
        if method != "HEAD":
            assert r.json()["requestContext"]["http"]["method"] == method


# ---- addressing and access ------------------------------------------------------------------------

async def test_unknown_url_id_is_403_access_denied(front: Front) -> None:
    await fn_with_url(front)
    for req in (("GET", "/x", [("Host", host_of("0" * 32))]), ("GET", f"/lambda-url/{'f' * 32}/x", [])):
        r = await front.request(req[0], req[1], headers=req[2])
        assert r.status == 403
        assert r.json() == {"Message": None}
        assert r.header("x-amzn-ErrorType") == "AccessDeniedException"


async def test_host_and_path_addressing_reach_the_same_function(front: Front) -> None:
    url_id = await fn_with_url(front)
    by_host = (await front.request("GET", "/same?q=1", headers=[("Host", host_of(url_id))])).json()
    by_path = (await front.request("GET", f"/lambda-url/{url_id}/same?q=1")).json()
    for ev in (by_host, by_path):
        assert ev["rawPath"] == "/same" and ev["queryStringParameters"] == {"q": "1"}
        assert ev["requestContext"]["apiId"] == url_id


async def test_auth_none_needs_the_public_permission(front: Front) -> None:
    url_id = await fn_with_url(front, public=False)
    r = await front.request("GET", f"/lambda-url/{url_id}/")
    assert r.status == 403 and r.header("x-amzn-ErrorType") == "AccessDeniedException"
    await front.aws.lambda_.add_permission(
        FunctionName="web", StatementId="s", Action="lambda:InvokeFunctionUrl", Principal="*",
        FunctionUrlAuthType="NONE")
    assert (await front.request("GET", f"/lambda-url/{url_id}/")).status == 200


def sign(url: str, method: str, body: bytes, region: str = "us-east-1") -> list[tuple[str, str]]:
    req = botocore.awsrequest.AWSRequest(method=method, url=url, data=body)
    botocore.auth.SigV4Auth(botocore.credentials.Credentials("AKIDEXAMPLE", "secret"), "lambda",
                            region).add_auth(req)
    return [(k, v) for k, v in req.headers.items()]


async def test_aws_iam_requires_a_sigv4_signature(front: Front) -> None:
    url_id = await fn_with_url(front, auth="AWS_IAM")
    unsigned = await front.request("POST", f"/lambda-url/{url_id}/iam", body=b"{}")
    assert unsigned.status == 403
    assert unsigned.header("x-amzn-ErrorType") == "AccessDeniedException"
    url = f"http://127.0.0.1:{front.port}/lambda-url/{url_id}/iam"
    wrong_service = await front.request("POST", f"/lambda-url/{url_id}/iam", body=b"{}",
                                        headers=[(k, v.replace("/lambda/", "/s3/")) for k, v in
                                                 sign(url, "POST", b"{}")])
    assert wrong_service.status == 403
    wrong_region = await front.request("POST", f"/lambda-url/{url_id}/iam", body=b"{}",
                                       headers=sign(url, "POST", b"{}", region="eu-west-1"))
    assert wrong_region.status == 403
    signed = await front.request("POST", f"/lambda-url/{url_id}/iam", body=b"{}",
                                 headers=sign(url, "POST", b"{}"))
    assert signed.status == 200, signed.body
    ctx = signed.json()["requestContext"]
    assert ctx["authorizer"]["iam"]["accessKey"] == "AKIDEXAMPLE"
    assert ctx["accountId"] == "000000000000"


async def test_alias_url_invokes_the_alias_version(front: Front) -> None:
    await create_fn(front.aws, "ver", Code={"ZipFile": app_zip("v1")}, Timeout=30)
    v1 = await front.aws.lambda_.publish_version(FunctionName="ver")
    await front.aws.lambda_.create_alias(FunctionName="ver", Name="live", FunctionVersion=v1["Version"])
    await front.aws.lambda_.update_function_code(FunctionName="ver", ZipFile=app_zip("v2"))
    live = await front.url("ver", qualifier="live")
    latest = await front.url("ver")
    assert live != latest
    assert (await front.request("GET", f"/lambda-url/{live}/version")).body == b"v1"
    assert (await front.request("GET", f"/lambda-url/{latest}/version")).body == b"v2"


# ---- CORS ------------------------------------------------------------------------------------------

CORS = {"AllowOrigins": ["https://app.example"], "AllowMethods": ["GET", "POST"],
        "AllowHeaders": ["X-Custom", "Content-Type"], "ExposeHeaders": ["X-Custom"], "MaxAge": 300,
        "AllowCredentials": True}


async def test_cors_preflight_is_answered_from_the_config(front: Front) -> None:
    url_id = await fn_with_url(front, Cors=CORS)
    before = front.daemon.invoker.statistics().invocations
    r = await front.request("OPTIONS", f"/lambda-url/{url_id}/any", headers=[
        ("Origin", "https://app.example"), ("Access-Control-Request-Method", "POST"),
        ("Access-Control-Request-Headers", "x-custom")])
    assert r.status == 200 and r.body == b""
    assert r.header("access-control-allow-origin") == "https://app.example"
    assert r.header("access-control-allow-methods") == "GET,POST"
    assert r.header("access-control-allow-headers") == "x-custom,content-type"
    assert r.header("access-control-max-age") == "300"
    assert r.header("access-control-allow-credentials") == "true"
    assert front.daemon.invoker.statistics().invocations == before  # the function never ran
    other = await front.request("OPTIONS", f"/lambda-url/{url_id}/any", headers=[
        ("Origin", "https://other.example"), ("Access-Control-Request-Method", "POST")])
    assert other.status == 200 and other.header("access-control-allow-origin") is None


async def test_cors_headers_on_normal_responses(front: Front) -> None:
    url_id = await fn_with_url(front, Cors=CORS)
    r = await front.request("GET", f"/lambda-url/{url_id}/cors", headers=[("Origin", "https://app.example")])
    assert r.status == 200
    # The URL's config replaces the function's own Access-Control-Allow-Origin.
    assert r.all("access-control-allow-origin") == ["https://app.example"]
    assert r.header("access-control-expose-headers") == "x-custom"
    assert r.header("access-control-allow-credentials") == "true"
    plain = await front.request("GET", f"/lambda-url/{url_id}/plain", headers=[("Origin", "https://x.example")])
    assert plain.status == 200 and plain.header("access-control-allow-origin") is None


async def test_cors_wildcard_origin(front: Front) -> None:
    url_id = await fn_with_url(front, Cors={"AllowOrigins": ["*"], "AllowMethods": ["*"]})
    r = await front.request("OPTIONS", f"/lambda-url/{url_id}/", headers=[
        ("Origin", "https://anything.example"), ("Access-Control-Request-Method", "DELETE")])
    assert r.header("access-control-allow-origin") == "*"
    assert r.header("access-control-allow-methods") == "*"


async def test_weighted_alias_routing_picks_by_weight(front: Front) -> None:
    await create_fn(front.aws, "w", Code={"ZipFile": app_zip("v1")})
    await front.aws.lambda_.publish_version(FunctionName="w")
    await front.aws.lambda_.update_function_code(FunctionName="w", ZipFile=app_zip("v2"))
    await front.aws.lambda_.publish_version(FunctionName="w")
    await front.aws.lambda_.create_alias(FunctionName="w", Name="canary", FunctionVersion="1",
                                         RoutingConfig={"AdditionalVersionWeights": {"2": 0.25}})
    url_id = await front.url("w", qualifier="canary")
    entry = front.daemon.control.url_config_by_id(url_id)
    assert entry is not None
    cfg, state = entry
    assert target_version(state, cfg, rand=0.1).version == "2"
    assert target_version(state, cfg, rand=0.9).version == "1"
