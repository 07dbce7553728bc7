"""Invoke: the hot path of the API, served as a bare ASGI app (no framework request/response objects).

``POST /2015-03-31/functions/{name}/invocations`` reaches ``InvokeApp`` straight from the gateway:
parse headers and query, read the body, resolve the target (alias weights), call the invoke
service, answer. Everything a framework would add per request (routing tables, request and
response objects, middleware) is skipped: on this path it cost more than the rest of flocid
(bench/README.md). Errors are rendered as everywhere else (``LambdaError.body()`` and the
``X-Amzn-ErrorType`` header).
"""

from __future__ import annotations

import json
import logging
import random
import re
import uuid
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote

from flocid.control import ControlPlane, Ctx
from flocid.lambda_.errors import (
    InvalidParameterValue,
    InvalidRequestContent,
    LambdaError,
    RequestTooLarge,
    ResourceConflict,
    ServiceError,
    ValidationError,
)
from flocid.lambda_.models import LATEST, FunctionConfig

log = logging.getLogger("flocid.api")

INVOKE_PATH = re.compile(r"^/2015-03-31/functions/([^/]+)/invocations/?$")
_CRED_RE = re.compile(r"Credential=([^/,\s]+)/\d{8}/([a-z0-9-]+)/")
MAX_SYNC_REQUEST = 6291456
MAX_EVENT_REQUEST = 1048576


class Invoker(Protocol):
    async def invoke(self, fn: FunctionConfig, payload: bytes, *, invocation_type: str = ...,
                     log_type: str | None = ..., client_context: str | None = ...) -> Any: ...


def ctx_from_authorization(auth: str, default_region: str, default_account: str) -> Ctx:
    """Region from the SigV4 credential scope; account from a 12-digit access key (Floci's rule)."""
    region, account = default_region, default_account
    m = _CRED_RE.search(auth)
    if m:
        region = m.group(2)
        key = m.group(1)
        if key.isdigit() and len(key) == 12:
            account = key
    return Ctx(region=region, account=account)


async def invoke(control: ControlPlane, invoker: Invoker | None, ctx: Ctx, name: str, qualifier: str | None,
                 headers: Mapping[str, str], payload: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """One Invoke request: (status, response headers, body). ``headers`` keys are lower-case."""
    itype = headers.get("x-amz-invocation-type", "RequestResponse")
    if itype not in ("RequestResponse", "Event", "DryRun"):
        raise ValidationError(
            f"1 validation error detected: Value '{itype}' at 'invocationType' failed to satisfy "
            "constraint: Member must satisfy enum value set: [Event, RequestResponse, DryRun]"
        )
    log_type = headers.get("x-amz-log-type")
    if log_type not in (None, "None", "Tail"):
        raise ValidationError(
            f"1 validation error detected: Value '{log_type}' at 'logType' failed to satisfy "
            "constraint: Member must satisfy enum value set: [None, Tail]"
        )
    ref = control.ref(ctx, name, qualifier, invoke=True)
    # An upload of this function's S3 object may be being applied: the next invoke runs the new code.
    await control.wait_synced(ref.region, ref.account, ref.name)
    st, fn, alias = control.resolve(ref, latest_suffix=True)
    if alias is not None and alias.routing:
        # Weighted routing: the additional version gets its weight, the primary the rest.
        ((extra, weight),) = alias.routing.items()
        if random.random() < weight:
            fn = st.versions[extra]
    if fn.state != "Active":
        raise ResourceConflict(
            "The operation cannot be performed at this time. The function is currently in the "
            f"following state: {fn.state}"
        )
    limit = MAX_EVENT_REQUEST if itype == "Event" else MAX_SYNC_REQUEST
    if len(payload) > limit:
        raise RequestTooLarge(f"Request must be smaller than {limit} bytes for the InvokeFunction operation")
    if payload:
        _check_json(payload)
    if itype == "DryRun":
        return 204, [(b"x-amz-executed-version", fn.version.encode())], b""
    if invoker is None:
        raise InvalidParameterValue(
            "flocid runs without an executor: invocations are disabled (start it with Docker available "
            "or set FLOCI_SERVICES_LAMBDA_EXECUTOR=process)"
        )
    result = await invoker.invoke(fn, payload, invocation_type=itype, log_type=log_type,
                                  client_context=headers.get("x-amz-client-context"))
    rid = result.request_id.encode()
    out = [(b"x-amz-request-id", rid), (b"x-amzn-requestid", rid),
           (b"x-amz-executed-version", (result.executed_version or LATEST).encode())]
    if result.payload:
        out.append((b"content-type", b"application/json"))
    if result.function_error:
        out.append((b"x-amz-function-error", result.function_error.encode()))
    if result.log_result:
        out.append((b"x-amz-log-result", result.log_result.encode()))
    return result.status, out, result.payload


def _check_json(payload: bytes) -> None:
    try:
        json.loads(payload)
    except UnicodeDecodeError as exc:
        raise InvalidRequestContent(
            "Could not parse request body into json: Could not parse payload into json: "
            f"Invalid UTF-8 start byte 0x{payload[exc.start]:02x}"
        ) from exc
    except ValueError as exc:
        raise InvalidRequestContent(
            f"Could not parse request body into json: Could not parse payload into json: {exc}"
        ) from exc


def error_response(exc: LambdaError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = json.dumps(exc.body(), separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"x-amzn-errortype", exc.code.encode()),
               (b"x-amzn-requestid", str(uuid.uuid4()).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    return exc.status, headers, body


class InvokeApp:
    """The ASGI app for Invoke (the gateway sends it ``POST .../invocations``)."""

    def __init__(self, control: ControlPlane, invoker: Invoker | None) -> None:
        self.control = control
        self.invoker = invoker
        self._settings = control.settings

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        payload, complete = await _read_body(receive, MAX_SYNC_REQUEST)
        status, out, body = await self.respond(scope["path"], scope.get("query_string", b""), headers, payload,
                                               complete)
        out.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": body})

    async def respond(self, path: str, query_string: bytes, headers: dict[str, str], payload: bytes,
                      complete: bool) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """One Invoke: (status, headers, body). ``headers`` keys are lower-case; ``complete`` is
        False when the body was over the limit (and dropped). The API port's own loop
        (flocid.front) calls this directly; ``__call__`` is the ASGI form."""
        try:
            m = INVOKE_PATH.match(path)
            if m is None:  # the gateway only sends Invoke paths here
                raise ValidationError("not an Invoke request")
            if not complete:
                event = headers.get("x-amz-invocation-type") == "Event"
                limit = MAX_EVENT_REQUEST if event else MAX_SYNC_REQUEST
                raise RequestTooLarge(f"Request must be smaller than {limit} bytes for the InvokeFunction operation")
            qualifier = None
            if query_string:
                qualifier = parse_qs(query_string.decode("latin-1")).get("Qualifier", [None])[0]
            ctx = ctx_from_authorization(headers.get("authorization", ""), self._settings.default_region,
                                         self._settings.default_account)
            return await invoke(self.control, self.invoker, ctx, unquote(m.group(1)), qualifier, headers, payload)
        except LambdaError as exc:
            return error_response(exc)
        except Exception:
            log.exception("unexpected error on Invoke %s", path)
            return error_response(ServiceError("An internal error occurred in flocid; see its log."))


async def _read_body(receive: Any, limit: int) -> tuple[bytes, bool]:
    """(body, complete): past ``limit`` bytes the rest is read and dropped, and complete is False."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks), size <= limit
