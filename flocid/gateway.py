"""The front door at :4566: decides, per request, which application answers it.

    Invoke         ``POST /2015-03-31/functions/<f>/invocations``: the bare ASGI hot path
    function URL   Host ``<url-id>.lambda-url.<region>.<anything>`` or path ``/lambda-url/<url-id>/...``
    Lambda API     SigV4 scope service ``lambda``, or an unsigned request on a Lambda API path
    companions     everything else (S3, SQS, Kinesis, DynamoDB, CloudWatch Logs) when present

Only the ASGI scope is read (headers and path); bodies stream straight to the chosen app. Each
app is a plain ASGI callable, so the Lambda API (Quart-Trio), the function-URL front and the
companion services stay independent.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

_SCOPE_SERVICE = re.compile(rb"Credential=[^/,\s]+/\d{8}/[a-z0-9-]+/([a-z0-9-]+)/")
_LAMBDA_PATH = re.compile(r"^/(2015-03-31|2016-08-19|2017-03-31|2017-10-31|2018-10-31|2019-09-25|2019-09-30|"
                          r"2020-04-22|2020-06-30|2021-10-31|2014-11-13|2021-11-15)/|^/_flocid/")
_INVOKE_PATH = re.compile(r"^/2015-03-31/functions/[^/]+/invocations/?$")
_URL_HOST = re.compile(r"^([a-z0-9]{32})\.lambda-url\.[a-z0-9-]+\.")
_URL_PATH = re.compile(r"^/lambda-url/([a-z0-9]{32})(/.*)?$")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


def url_id_of(scope: Scope) -> tuple[str, str] | None:
    """(url id, path inside the function URL) when the request is for a function URL."""
    host = (_header(scope, b"host") or b"").decode("latin-1").lower()
    m = _URL_HOST.match(host)
    if m:
        return m.group(1), scope.get("path") or "/"
    m = _URL_PATH.match(scope.get("path") or "")
    if m:
        return m.group(1), m.group(2) or "/"
    return None


def service_of(scope: Scope) -> str | None:
    """The SigV4 credential-scope service of a request (``lambda``, ``s3``, ``sqs``...)."""
    auth = _header(scope, b"authorization")
    if auth:
        m = _SCOPE_SERVICE.search(auth)
        if m:
            return m.group(1).decode()
    query = scope.get("query_string", b"")
    m = re.search(rb"X-Amz-Credential=[^&]*?%2F\d{8}%2F[a-z0-9-]+%2F([a-z0-9-]+)%2F", query)
    return m.group(1).decode() if m else None


class Gateway:
    def __init__(self, lambda_app: ASGIApp, *, invoke_app: ASGIApp | None = None,
                 url_app: ASGIApp | None = None, services_app: ASGIApp | None = None) -> None:
        self.lambda_app = lambda_app
        self.invoke_app = invoke_app
        self.url_app = url_app
        self.services_app = services_app
        #: HTTP requests being answered right now (an idle keep-alive connection is not one).
        self.in_flight = 0
        self._idle = trio.lowlevel.ParkingLot()

    async def wait_idle(self) -> None:
        """Return once no HTTP request is in flight (for a graceful stop; bound it by a deadline)."""
        while self.in_flight:
            await self._idle.park()

    def choose(self, scope: Scope) -> ASGIApp:
        if scope["type"] != "http":
            return self.lambda_app  # lifespan and the rest go to the Lambda app
        if self.url_app is not None and url_id_of(scope) is not None:
            return self.url_app
        service = service_of(scope)
        if (self.invoke_app is not None and service in (None, "lambda") and scope.get("method") == "POST"
                and _INVOKE_PATH.match(scope.get("path") or "")):
            return self.invoke_app  # the hot path, without the framework
        if service == "lambda":
            return self.lambda_app
        if service is None and _LAMBDA_PATH.match(scope.get("path") or ""):
            return self.lambda_app
        if self.services_app is not None:
            return self.services_app
        return self.lambda_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lambda_app(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.choose(scope)(scope, receive, send)
        finally:
            self.request_done()

    def request_done(self) -> None:
        """A request counted in ``in_flight`` is answered (flocid.front counts Invoke itself)."""
        self.in_flight -= 1
        if not self.in_flight:
            self._idle.unpark_all()
