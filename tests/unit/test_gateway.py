"""The front door's routing decisions, from the ASGI scope alone."""

from __future__ import annotations

from typing import Any

from flocid.gateway import Gateway, service_of, url_id_of

URL_ID = "a" * 32


async def _app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never called
    raise AssertionError


async def _other(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never called
    raise AssertionError


async def _urls(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never called
    raise AssertionError


def scope(path: str = "/", host: str = "localhost:4566", auth: str | None = None, query: bytes = b"") -> dict[str, Any]:
    headers = [(b"host", host.encode())]
    if auth:
        headers.append((b"authorization", auth.encode()))
    return {"type": "http", "path": path, "headers": headers, "query_string": query}


def sig(service: str) -> str:
    return f"AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=x"


def test_service_of_reads_the_sigv4_scope() -> None:
    assert service_of(scope(auth=sig("lambda"))) == "lambda"
    assert service_of(scope(auth=sig("s3"))) == "s3"
    assert service_of(scope(query=b"X-Amz-Credential=test%2F20260101%2Fus-east-1%2Fs3%2Faws4_request")) == "s3"
    assert service_of(scope()) is None


def test_url_ids_from_host_or_path() -> None:
    assert url_id_of(scope("/x", host=f"{URL_ID}.lambda-url.us-east-1.localhost.floci.io:4566")) == (URL_ID, "/x")
    assert url_id_of(scope(f"/lambda-url/{URL_ID}/a/b")) == (URL_ID, "/a/b")
    assert url_id_of(scope(f"/lambda-url/{URL_ID}")) == (URL_ID, "/")
    assert url_id_of(scope("/2015-03-31/functions/")) is None


def test_choose() -> None:
    gw = Gateway(_app, url_app=_urls, services_app=_other)
    assert gw.choose(scope("/2015-03-31/functions/", auth=sig("lambda"))) is _app
    assert gw.choose(scope("/2015-03-31/functions/")) is _app  # unsigned Lambda path
    assert gw.choose(scope("/my-bucket/key", auth=sig("s3"))) is _other
    assert gw.choose(scope("/", auth=sig("sqs"))) is _other
    # A bucket that looks like a Lambda API version is still S3 when the request says so.
    assert gw.choose(scope("/2015-03-31/functions/", auth=sig("s3"))) is _other
    assert gw.choose(scope("/", host=f"{URL_ID}.lambda-url.us-east-1.localhost.floci.io")) is _urls
    # Without companion services everything else still reaches the Lambda app (its 404s).
    assert Gateway(_app).choose(scope("/bucket", auth=sig("s3"))) is _app
