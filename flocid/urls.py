"""Function URLs: plain HTTP requests in, payload format 2.0 events to the function, responses out.

The gateway (``flocid.gateway``) sends here every request whose Host is
``<url-id>.lambda-url.<region>.<anything>`` or whose path is ``/lambda-url/<url-id>/...``. This room
is a bare ASGI app (no framework: one ``http.response.start`` and one ``http.response.body`` per
request). The HTTP-free parts (event building, response mapping, CORS, the auth checks) are plain
functions below; the ASGI shell only reads the request, calls them and the invoker, and writes.

AWS behaviour reproduced (peers.md 1.10 item 31, the Lambda developer guide "Invoking function URLs"):

- unknown URL id: 403 ``{"Message":null}`` with ``x-amzn-ErrorType: AccessDeniedException``;
- ``AuthType AWS_IAM``: a request without a SigV4 signature of the right shape is refused (403
  ``{"Message":"Forbidden"}``). flocid cannot verify the signature itself (it does not know the
  caller's secret key), so it checks the shape only: see ``sigv4_problem``;
- ``AuthType NONE``: AWS answers 403 unless the function's resource policy (for the URL's
  qualifier) allows ``lambda:InvokeFunctionUrl`` to principal ``*``; flocid does the same unless
  ``require_policy=False`` (see docs/function-urls.md);
- a handler error: 502 ``Internal Server Error``;
- a response object with ``statusCode`` is mapped (headers, cookies as Set-Cookie, base64 bodies);
  anything else is a 200 ``application/json`` whose body is the payload as returned;
- CORS: with a Cors config, OPTIONS preflights are answered here (the function is not invoked)
  and the configured ``Access-Control-*`` headers replace the function's own on other responses.

Imports: control plane, gateway helpers, the lambda_ domain (never the API app).
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import json
import logging
import random
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

from flocid.api.invoke import Invoker
from flocid.control import ControlPlane, FunctionState
from flocid.gateway import ASGIApp, Receive, Scope, Send, url_id_of
from flocid.lambda_.errors import LambdaError
from flocid.lambda_.models import LATEST, FunctionConfig, UrlConfig

log = logging.getLogger("flocid.urls")

#: AWS's synchronous request limit applies to the event built from the request.
MAX_REQUEST_BYTES = 6_291_456

Headers = list[tuple[bytes, bytes]]


# ---- the event (payload format 2.0) ---------------------------------------------------------------

_TEXT_TYPES = re.compile(
    r"^(text/.*|application/(json|.*\+json|xml|.*\+xml|javascript|x-www-form-urlencoded|graphql)"
    r"|multipart/form-data)(\s*;.*)?$",
    re.IGNORECASE,
)


def is_text(content_type: str | None, body: bytes) -> bool:
    """Whether a body travels as text (else base64): a textual content type and valid UTF-8.

    AWS base64-encodes bodies it does not know to be text; a body with no content type is sent as
    text when it is valid UTF-8 (what curl and browsers send for small forms and JSON)."""
    if content_type and not _TEXT_TYPES.match(content_type.strip()):
        return False
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _aws_time(epoch: float) -> str:
    return _dt.datetime.fromtimestamp(epoch, _dt.UTC).strftime("%d/%b/%Y:%H:%M:%S +0000")


def build_event(
    *,
    url_id: str,
    account: str,
    domain_name: str,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    source_ip: str,
    protocol: str = "HTTP/1.1",
    request_id: str | None = None,
    now: float | None = None,
    authorizer: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The payload format 2.0 event AWS gives a function behind a URL.

    Header names are lower-cased and repeated headers joined with ``,``; the ``cookie`` header
    becomes the ``cookies`` list; query parameters are decoded and repeated ones joined with ``,``.
    Empty ``cookies``, ``queryStringParameters`` and ``body`` are left out, as AWS does."""
    joined: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in headers:
        low = name.lower()
        if low == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
            continue
        joined[low] = f"{joined[low]},{value}" if low in joined else value
    now = time.time() if now is None else now
    request_id = request_id or str(uuid.uuid4())
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": raw_path,
        "rawQueryString": raw_query,
    }
    if cookies:
        event["cookies"] = cookies
    event["headers"] = joined
    if raw_query:
        params: dict[str, str] = {}
        for key, value in parse_qsl(raw_query, keep_blank_values=True):
            params[key] = f"{params[key]},{value}" if key in params else value
        event["queryStringParameters"] = params
    context: dict[str, Any] = {
        "accountId": "anonymous" if authorizer is None else account,
        "apiId": url_id,
        "domainName": domain_name,
        "domainPrefix": url_id,
        "http": {
            "method": method,
            "path": raw_path,
            "protocol": protocol,
            "sourceIp": source_ip,
            "userAgent": joined.get("user-agent", ""),
        },
        "requestId": request_id,
        "routeKey": "$default",
        "stage": "$default",
        "time": _aws_time(now),
        "timeEpoch": int(now * 1000),
    }
    if authorizer is not None:
        context["authorizer"] = authorizer
    event["requestContext"] = context
    text = is_text(joined.get("content-type"), body)
    if body:
        event["body"] = body.decode("utf-8") if text else base64.b64encode(body).decode()
    event["isBase64Encoded"] = bool(body) and not text
    return event


# ---- the response -----------------------------------------------------------------------------


class BadFunctionResponse(Exception):
    """The function returned a response object AWS would refuse (a 502 to the client)."""


def map_response(payload: bytes) -> tuple[int, Headers, bytes]:
    """(status, headers, body) for what the function returned.

    A JSON object with ``statusCode`` is a response description; any other valid JSON is the body
    of a 200 ``application/json`` response, sent as the function returned it."""
    try:
        doc = json.loads(payload) if payload else None
    except ValueError:
        doc = None
    if not (isinstance(doc, dict) and "statusCode" in doc):
        return 200, [(b"content-type", b"application/json")], payload
    status = doc["statusCode"]
    if isinstance(status, str) and status.isdigit():
        status = int(status)
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise BadFunctionResponse(f"statusCode {status!r} is not an HTTP status")
    out: Headers = []
    raw_headers = doc.get("headers") or {}
    if not isinstance(raw_headers, dict):
        raise BadFunctionResponse("headers is not an object")
    for name, value in raw_headers.items():
        if value is None:
            continue
        text = value if isinstance(value, str) else json.dumps(value)
        out.append((str(name).lower().encode("latin-1"), text.encode("latin-1", "replace")))
    for cookie in doc.get("cookies") or ():
        out.append((b"set-cookie", str(cookie).encode("latin-1", "replace")))
    body = doc.get("body")
    data: bytes
    if body is None:
        data = b""
    elif doc.get("isBase64Encoded") is True:
        if not isinstance(body, str):
            raise BadFunctionResponse("isBase64Encoded with a body that is not a string")
        try:
            data = base64.b64decode(body, validate=True)
        except binascii.Error as exc:
            raise BadFunctionResponse("body is not valid base64") from exc
    elif isinstance(body, str):
        data = body.encode("utf-8")
    else:
        data = json.dumps(body).encode()
    return status, out, data


# ---- CORS -----------------------------------------------------------------------------------------


def _origin_allowed(cors: Mapping[str, Any], origin: str) -> str | None:
    """The Access-Control-Allow-Origin value for ``origin``, or None when it is not allowed."""
    allowed = [str(o) for o in cors.get("AllowOrigins") or ()]
    if "*" in allowed:
        # Browsers refuse "*" together with credentials: echo the origin then.
        return origin if cors.get("AllowCredentials") else "*"
    low = origin.lower()
    return origin if any(o.lower() == low for o in allowed) else None


def cors_preflight_headers(cors: Mapping[str, Any], origin: str) -> Headers:
    """Headers of the answer to an OPTIONS preflight from ``origin`` (none when it is not allowed)."""
    allow = _origin_allowed(cors, origin)
    if allow is None:
        return []
    out: Headers = [(b"access-control-allow-origin", allow.encode())]
    methods = cors.get("AllowMethods")
    if methods:
        out.append((b"access-control-allow-methods", ",".join(methods).encode()))
    headers = cors.get("AllowHeaders")
    if headers:
        out.append((b"access-control-allow-headers", ",".join(headers).lower().encode()))
    if cors.get("MaxAge") is not None:
        out.append((b"access-control-max-age", str(int(cors["MaxAge"])).encode()))
    if cors.get("AllowCredentials"):
        out.append((b"access-control-allow-credentials", b"true"))
    if cors.get("ExposeHeaders"):
        out.append((b"access-control-expose-headers", ",".join(cors["ExposeHeaders"]).lower().encode()))
    if allow != "*":
        out.append((b"vary", b"Origin"))
    return out


def cors_response_headers(cors: Mapping[str, Any], origin: str) -> Headers:
    """Headers added to an ordinary response when the request's ``origin`` is allowed."""
    allow = _origin_allowed(cors, origin)
    if allow is None:
        return []
    out: Headers = [(b"access-control-allow-origin", allow.encode())]
    if cors.get("AllowCredentials"):
        out.append((b"access-control-allow-credentials", b"true"))
    if cors.get("ExposeHeaders"):
        out.append((b"access-control-expose-headers", ",".join(cors["ExposeHeaders"]).lower().encode()))
    if allow != "*":
        out.append((b"vary", b"Origin"))
    return out


# ---- auth -----------------------------------------------------------------------------------------

_SIGV4 = re.compile(
    r"^AWS4-HMAC-SHA256\s+"
    r"Credential=(?P<key>[A-Za-z0-9]{1,128})/(?P<date>\d{8})/(?P<region>[a-z0-9-]+)/(?P<service>[a-z0-9-]+)/aws4_request,\s*"
    r"SignedHeaders=(?P<signed>[a-z0-9;_.-]+),\s*"
    r"Signature=(?P<sig>[0-9a-f]{64})$"
)


def sigv4_problem(headers: Mapping[str, str], region: str) -> str | None:
    """Why a request is not a well-formed SigV4 request for ``lambda`` in ``region`` (None: it is).

    Checked: the ``Authorization`` header has the AWS4-HMAC-SHA256 shape with a credential scope
    ``<key>/<yyyymmdd>/<region>/lambda/aws4_request``, a ``SignedHeaders`` list that includes
    ``host``, a 64-hex ``Signature``; the region is the URL's; an ``x-amz-date`` header is present
    and its day is the scope's. Not checked: the signature value itself (flocid does not know the
    caller's secret key) and the clock skew."""
    auth = headers.get("authorization")
    if not auth:
        return "missing Authorization header"
    m = _SIGV4.match(auth.strip())
    if m is None:
        return "Authorization is not an AWS4-HMAC-SHA256 signature"
    if m.group("service") != "lambda":
        return f"credential scope service is {m.group('service')!r}, not 'lambda'"
    if m.group("region") != region:
        return f"credential scope region is {m.group('region')!r}, not {region!r}"
    if "host" not in m.group("signed").split(";"):
        return "SignedHeaders does not include host"
    amz_date = headers.get("x-amz-date", "")
    if not re.fullmatch(r"\d{8}T\d{6}Z", amz_date):
        return "missing or malformed X-Amz-Date"
    if amz_date[:8] != m.group("date"):
        return "X-Amz-Date is not the credential scope date"
    return None


def policy_allows_public(state: FunctionState, qualifier: str | None) -> bool:
    """Whether the resource policy lets anyone (principal ``*``) invoke the URL with AuthType NONE.

    AWS needs a statement allowing ``lambda:InvokeFunctionUrl`` (what ``add-permission --action
    lambda:InvokeFunctionUrl --principal * --function-url-auth-type NONE`` writes) on the URL's
    qualifier; a ``lambda:FunctionUrlAuthType`` condition, when present, must say NONE."""
    policy = state.policies.get(qualifier or "") or {}
    for st in policy.get("statements", ()):
        if st.get("Effect") != "Allow" or st.get("Principal") not in ("*", {"AWS": "*"}):
            continue
        actions = st.get("Action")
        actions = [actions] if isinstance(actions, str) else list(actions or ())
        if not any(a in ("lambda:InvokeFunctionUrl", "lambda:*", "*") for a in actions):
            continue
        auth = (st.get("Condition") or {}).get("StringEquals", {}).get("lambda:FunctionUrlAuthType")
        if auth not in (None, "NONE"):
            continue
        return True
    return False


# ---- target resolution -------------------------------------------------------------------------


def target_version(state: FunctionState, cfg: UrlConfig, *, rand: float | None = None) -> FunctionConfig:
    """The version a URL invokes: ``$LATEST``, or its alias's version with weighted routing."""
    if not cfg.qualifier:
        return state.latest
    alias = state.aliases[cfg.qualifier]
    version = alias.function_version
    if alias.routing:
        ((extra, weight),) = alias.routing.items()
        if (random.random() if rand is None else rand) < weight:
            version = extra
    return state.latest if version == LATEST else state.versions[version]


# ---- the ASGI shell ---------------------------------------------------------------------------------


async def _send(send: Send, status: int, headers: Headers, body: bytes) -> None:
    """One start and one body message: the server writes the response without a streaming gap."""
    headers = [h for h in headers if h[0] != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _json_error(message: str | None, error_type: str) -> tuple[Headers, bytes]:
    body = json.dumps({"Message": message}, separators=(",", ":")).encode()
    return [(b"content-type", b"application/json"), (b"x-amzn-errortype", error_type.encode())], body


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None when it exceeds ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _decode_headers(scope: Scope) -> list[tuple[str, str]]:
    return [(bytes(k).decode("latin-1"), bytes(v).decode("latin-1")) for k, v in scope.get("headers", ())]


def create_url_app(control: ControlPlane, invoker: Invoker | None, *, require_policy: bool = True) -> ASGIApp:
    """The ASGI app that answers function-URL requests.

    ``require_policy=False`` lets AuthType NONE URLs answer without the resource-policy statement
    AWS requires (a convenience for local development; AWS itself answers 403)."""
    settings = control.settings
    base_host = settings.hostname or "localhost.floci.io"

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request_id = str(uuid.uuid4())
        rid = (b"x-amzn-requestid", request_id.encode())
        found = url_id_of(scope)
        entry = control.url_config_by_id(found[0]) if found else None
        if found is None or entry is None:
            hdrs, body = _json_error(None, "AccessDeniedException")
            await _send(send, 403, [*hdrs, rid], body)
            return
        url_id, _inner = found
        cfg, state = entry
        header_list = _decode_headers(scope)
        hmap = {k.lower(): v for k, v in header_list}
        method = str(scope.get("method", "GET")).upper()
        origin = hmap.get("origin")
        cors = cfg.cors or {}

        # CORS preflight: answered from the config, before auth (browsers never sign preflights).
        if method == "OPTIONS" and cors and origin and "access-control-request-method" in hmap:
            await _send(send, 200, [*cors_preflight_headers(cors, origin), rid], b"")
            return

        extra: Headers = cors_response_headers(cors, origin) if cors and origin else []
        authorizer: dict[str, Any] | None = None
        if cfg.auth_type == "AWS_IAM":
            problem = sigv4_problem(hmap, cfg.region)
            if problem is not None:
                log.info("function URL %s: refused unsigned request (%s)", url_id, problem)
                hdrs, body = _json_error("Forbidden", "AccessDeniedException")
                await _send(send, 403, [*hdrs, *extra, rid], body)
                return
            key = re.search(r"Credential=([^/]+)/", hmap["authorization"])
            access_key = key.group(1) if key else ""
            caller_account = access_key if access_key.isdigit() and len(access_key) == 12 else cfg.account
            authorizer = {"iam": {
                "accessKey": access_key, "accountId": caller_account, "callerId": access_key,
                "cognitoIdentity": None, "principalOrgId": None,
                "userArn": f"arn:aws:iam::{caller_account}:root", "userId": access_key,
            }}
        elif require_policy and not policy_allows_public(state, cfg.qualifier):
            log.info("function URL %s: AuthType NONE without a policy allowing lambda:InvokeFunctionUrl "
                     "to principal * (AWS answers 403; add-permission fixes it)", url_id)
            hdrs, body = _json_error("Forbidden", "AccessDeniedException")
            await _send(send, 403, [*hdrs, *extra, rid], body)
            return

        body_bytes = await _read_body(receive, MAX_REQUEST_BYTES)
        if body_bytes is None:
            hdrs, body = _json_error("Request Entity Too Large", "RequestEntityTooLargeException")
            await _send(send, 413, [*hdrs, *extra, rid], body)
            return

        host = hmap.get("host", "").split(":")[0].lower()
        by_host = _URL_HOST.match(host) is not None
        raw_path = _raw_path(scope, None if by_host else url_id)
        raw_query = bytes(scope.get("query_string", b"")).decode("latin-1")
        domain = host if by_host else f"{url_id}.lambda-url.{cfg.region}.{base_host}"
        client = scope.get("client") or ("127.0.0.1", 0)
        event_headers = list(header_list)
        if "x-forwarded-for" not in hmap:
            event_headers.append(("x-forwarded-for", str(client[0])))
        if "x-forwarded-proto" not in hmap:
            event_headers.append(("x-forwarded-proto", str(scope.get("scheme", "http"))))
        server = scope.get("server")
        if "x-forwarded-port" not in hmap and server:
            event_headers.append(("x-forwarded-port", str(server[1])))
        if "x-amzn-trace-id" not in hmap:
            event_headers.append(("x-amzn-trace-id", f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}"))
        event = build_event(
            url_id=url_id, account=cfg.account, domain_name=domain, method=method,
            raw_path=raw_path, raw_query=raw_query, headers=event_headers, body=body_bytes,
            source_ip=str(client[0]), protocol=f"HTTP/{scope.get('http_version', '1.1')}",
            request_id=request_id, authorizer=authorizer,
        )

        if invoker is None:
            hdrs, body = _json_error("flocid runs without an executor: invocations are disabled",
                                     "ServiceException")
            await _send(send, 500, [*hdrs, *extra, rid], body)
            return
        try:
            fn = target_version(state, cfg)
            if fn.state != "Active":
                raise _NotActive(fn.state)
            result = await invoker.invoke(fn, json.dumps(event).encode())
        except _NotActive as exc:
            hdrs, body = _json_error(
                "The operation cannot be performed at this time. The function is currently in the "
                f"following state: {exc}", "ResourceConflictException")
            await _send(send, 409, [*hdrs, *extra, rid], body)
            return
        except LambdaError as exc:
            hdrs, body = _json_error(exc.message, exc.code)
            hdrs.extend((k.lower().encode(), v.encode()) for k, v in exc.headers.items())
            await _send(send, exc.status, [*hdrs, *extra, rid], body)
            return
        except Exception:
            # Never a traceback to the client; the log has it.
            log.exception("function URL %s: invocation failed", url_id)
            hdrs, body = _json_error("Internal Server Error", "ServiceException")
            await _send(send, 500, [*hdrs, *extra, rid], body)
            return
        if result.function_error:
            await _send(send, 502, [(b"content-type", b"text/plain"), *extra, rid], b"Internal Server Error")
            return
        try:
            status, headers, data = map_response(result.payload)
        except BadFunctionResponse as exc:
            log.info("function URL %s: %s", url_id, exc)
            await _send(send, 502, [(b"content-type", b"text/plain"), *extra, rid], b"Internal Server Error")
            return
        if extra:
            # The URL's CORS config wins over the function's own Access-Control-* headers (AWS).
            headers = [h for h in headers if not h[0].startswith(b"access-control-")]
        await _send(send, status, [*headers, *extra, rid], data)

    return app


class _NotActive(Exception):
    pass


_URL_HOST = re.compile(r"^[a-z0-9]{32}\.lambda-url\.[a-z0-9-]+\.")


def _raw_path(scope: Scope, path_id: str | None) -> str:
    """The path as the client sent it (percent-encoding kept), inside the function URL; for
    path-based addressing (``path_id`` set) the ``/lambda-url/<id>`` prefix is removed."""
    raw = scope.get("raw_path")
    path = bytes(raw).decode("latin-1") if raw else str(scope.get("path") or "/")
    path = path.split("?", 1)[0]
    if path_id is not None:
        prefix = f"/lambda-url/{path_id}"
        if path.startswith(prefix):
            path = path[len(prefix):]
    return path or "/"
